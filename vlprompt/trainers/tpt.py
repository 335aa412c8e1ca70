"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning, one test image at a time.

For every test image: N views (the original + random crops, AugMix on top for fine-grained sets), keep the
SELECTION_P most confident (lowest-entropy) views, take STEPS AdamW steps on the prompt context to lower the
entropy of their averaged prediction, predict the original view with the tuned prompt, then start the next
image from the initial prompt again. The initial prompt is hand-crafted words (CTX_INIT) or a CoOp/CoCoOp
checkpoint (TRAINER.TPT.LOAD, or --model-dir/--load-epoch).

Nothing is trained: ``train()`` evaluates. Exact savings over the reference: views are encoded once per
image (the original's feature is reused for the prediction), the text tower stops at the last end-of-text
token and computes the shared [SOS][context] positions once, CLIP is loaded once for all datasets, and on a
GPU several images are tuned at once with independent prompts (TRAINER.TPT.BATCH_IMAGES). Predictions are
logged per image, so a killed run resumes, and TRAINER.TPT.SHARD i/n evaluates one part of the test set
(``python -m vlprompt.tta.merge`` combines the parts).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import os.path as osp
import secrets
import time
from collections import OrderedDict

import numpy as np
import torch
from torch.utils.data import DataLoader
from yacs.config import CfgNode as CN

from vlprompt.clip_backbone import apply_precision, clip_input_resolution, load_clip_cached
from vlprompt.compat import DATASET_REGISTRY, TRAINER_REGISTRY, TrainerX
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.data import DataManager
from vlprompt.engine.evaluation import announce_skipped
from vlprompt.engine.progress import track
from vlprompt.errors import UserKeyError, UserValueError
from vlprompt.prompt_trainer import clip_fingerprint_extras
from vlprompt.prompts import CLASS_TOKEN_POSITIONS
from vlprompt.text_encoder import PromptTextEncoder
from vlprompt.tta.data import TPTViewDataset, collate_views, device_views
from vlprompt.tta.records import (
    PREDICTIONS_DIR,
    PredictionLog,
    prediction_path,
    prediction_row,
    print_summary,
    report,
    shard_from_config,
    shard_indices,
    shard_name,
)
from vlprompt.tta.sources import (
    ContextSource,
    WordsContext,
    context_from_checkpoint,
)
from vlprompt.tta.tuner import PromptTuner, TPTSettings, encode_views, normalize
from vlprompt.tta.views import AUG_CHOICES, ViewMaker, resolve_aug

PRECISIONS = ("amp", "fp32")
# The reference's --test_sets ids → dataset names registered here (single letters are case-sensitive).
REFERENCE_SET_IDS = {
    "I": "ImageNet", "A": "ImageNetA", "V": "ImageNetV2", "R": "ImageNetR", "K": "ImageNetSketch",
    "dtd": "DescribableTextures", "flower102": "OxfordFlowers", "food101": "Food101", "cars": "StanfordCars",
    "sun397": "SUN397", "aircraft": "FGVCAircraft", "pets": "OxfordPets", "caltech101": "Caltech101",
    "ucf101": "UCF101", "eurosat": "EuroSAT",
}  # fmt: skip


@register_cfg_extension
def add_tpt_keys(cfg) -> None:
    """``TRAINER.TPT.*`` with the reference's defaults."""
    cfg.TRAINER.TPT = CN()
    cfg.TRAINER.TPT.N_VIEWS = 64  # views per test image, the original included (the reference's -b)
    cfg.TRAINER.TPT.SELECTION_P = 0.1  # fraction of views kept by confidence selection
    cfg.TRAINER.TPT.STEPS = 1  # AdamW steps per test image
    cfg.TRAINER.TPT.LR = 5e-3
    cfg.TRAINER.TPT.WEIGHT_DECAY = 0.01  # AdamW's default, as the reference
    cfg.TRAINER.TPT.CTX_INIT = "a photo of a"  # words the context starts from ("_" for spaces; "" = random)
    cfg.TRAINER.TPT.N_CTX = 4  # number of random context vectors when CTX_INIT is ""
    cfg.TRAINER.TPT.CLASS_TOKEN_POSITION = "end"
    cfg.TRAINER.TPT.LOAD = ""  # a CoOp/CoCoOp checkpoint file or model directory to start from
    cfg.TRAINER.TPT.COCOOP_RAW_FEATURE = False  # True: meta-net on the unnormalised feature (reference code)
    cfg.TRAINER.TPT.AUG = "auto"  # auto (crop for ImageNet sets, AugMix otherwise), crop or augmix
    cfg.TRAINER.TPT.PREC = "amp"  # amp (fp16 autocast on CUDA, as the reference) or fp32
    cfg.TRAINER.TPT.BATCH_IMAGES = 1  # test images tuned at once (independent prompts; same result)
    cfg.TRAINER.TPT.GPU_VIEWS = False  # make the views on the model's device instead of in loader workers
    cfg.TRAINER.TPT.SHARD = ""  # "i/n": evaluate the i-th of n parts (else $VLPROMPT_TPT_SHARD)
    cfg.TRAINER.TPT.TEST_SETS = ""  # "/"-separated datasets (names or reference ids); "" = DATASET.NAME
    cfg.TRAINER.TPT.PRINT_FREQ = 200


# ---------------------------------------------------------------------------------------------- trainer
def resolve_set_name(name: str) -> str:
    """A dataset registered here, from its name or the reference's set id."""
    if name in DATASET_REGISTRY.registered_names():
        return name
    if name in REFERENCE_SET_IDS:
        return REFERENCE_SET_IDS[name]
    if len(name) > 1 and name.lower() in REFERENCE_SET_IDS:
        return REFERENCE_SET_IDS[name.lower()]
    raise UserKeyError(f'TRAINER.TPT.TEST_SETS: "{name}" is neither a registered dataset nor a reference set id; '
                   f"registered: {sorted(DATASET_REGISTRY.registered_names())}")


class _Meter:
    """The reference's running meter line: ``name val (avg)``."""

    def __init__(self, name: str, fmt: str) -> None:
        self.name, self.fmt = name, fmt
        self.val = self.sum = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.val = value
        self.sum += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)

    def __str__(self) -> str:
        return f"{self.name} {self.val:{self.fmt}} ({self.avg:{self.fmt}})"


@TRAINER_REGISTRY.register()
class TPT(TrainerX):
    """Test-time prompt tuning on the test split of every dataset in TRAINER.TPT.TEST_SETS (or DATASET.NAME)."""

    @property
    def method_cfg(self):
        return self.cfg.TRAINER.TPT

    def check_cfg(self, cfg) -> None:
        tpt = cfg.TRAINER.TPT
        problems = []
        if tpt.N_VIEWS < 1:
            problems.append(f"N_VIEWS is {tpt.N_VIEWS}; it counts the original view, so use >= 1")
        if not 0 < tpt.SELECTION_P <= 1:
            problems.append(f"SELECTION_P is {tpt.SELECTION_P}; use a fraction in (0, 1]")
        if tpt.STEPS < 0:
            problems.append(f"STEPS is {tpt.STEPS}; use >= 0")
        if tpt.BATCH_IMAGES < 1:
            problems.append(f"BATCH_IMAGES is {tpt.BATCH_IMAGES}; use >= 1")
        if tpt.PREC not in PRECISIONS:
            problems.append(f'PREC is "{tpt.PREC}"; use one of {", ".join(PRECISIONS)}')
        if tpt.AUG not in AUG_CHOICES:
            problems.append(f'AUG is "{tpt.AUG}"; use one of {", ".join(AUG_CHOICES)}')
        if tpt.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            problems.append(f'CLASS_TOKEN_POSITION is "{tpt.CLASS_TOKEN_POSITION}"; use one of '
                            f'{", ".join(CLASS_TOKEN_POSITIONS)}')
        if problems:
            raise UserValueError("TRAINER.TPT: " + "; ".join(problems))
        self.shard = shard_from_config(tpt.SHARD)

    # ------------------------------------------------------------------------------------------ data
    def build_data_loader(self) -> None:
        names = [n.strip() for n in self.method_cfg.TEST_SETS.replace(",", "/").split("/") if n.strip()]
        if not names:
            if not self.cfg.DATASET.NAME:
                raise UserValueError("TPT needs a dataset: pass --dataset-config-file or set TRAINER.TPT.TEST_SETS")
            names = [self.cfg.DATASET.NAME]
        import vlprompt.datasets  # noqa: F401 - registers the bundled datasets before names are resolved

        self.set_names = OrderedDict((name, resolve_set_name(name)) for name in names)
        self._managers: dict[str, DataManager] = {}
        first = next(iter(self.set_names))
        self._use_set(first)

    def _data_manager(self, set_name: str) -> DataManager:
        if set_name not in self._managers:
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.DATASET.NAME = self.set_names[set_name]
            cfg.freeze()
            # Keep one: a dataset's item list can be large. Only the evaluated split's images are checked.
            self._managers = {set_name: DataManager(cfg, check_splits=("val", "test"))}
        return self._managers[set_name]

    def _use_set(self, set_name: str) -> DataManager:
        dm = self._data_manager(set_name)
        self.dm = dm
        self.num_classes = dm.num_classes
        self.lab2cname = dm.lab2cname
        self.test_loader = dm.test_loader
        self.val_loader = dm.val_loader
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.num_source_domains = dm.num_source_domains
        return dm

    # ----------------------------------------------------------------------------------------- model
    def build_model(self) -> None:
        cfg, tpt = self.cfg, self.method_cfg
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        shared = load_clip_cached(cfg.MODEL.BACKBONE.NAME, device=self.device)
        # The cached model is shared with other trainers in this process: work on an fp32 copy.
        clip_model, _ = apply_precision(copy.deepcopy(shared), "fp32", self.device)
        clip_model.requires_grad_(False)
        resolution = clip_input_resolution(clip_model)
        if cfg.INPUT.SIZE[0] != resolution:
            raise UserValueError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the CLIP backbone's input "
                             f"resolution {resolution}; set INPUT.SIZE ({resolution}, {resolution})")
        self.clip_model = clip_model
        self.image_encoder = clip_model.visual
        self.text_encoder = PromptTextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale.detach().exp()
        amp = tpt.PREC == "amp" and self.device.type == "cuda"
        if tpt.PREC == "amp" and not amp:
            print("TPT: PREC amp needs CUDA; running in fp32")
        self.prec = "amp" if amp else "fp32"
        self.settings = TPTSettings(n_views=tpt.N_VIEWS, selection_p=tpt.SELECTION_P, steps=tpt.STEPS, lr=tpt.LR,
                                    weight_decay=tpt.WEIGHT_DECAY, amp=amp)
        # As the reference: one loss scaler for the whole run, starting at 1000.
        self.scaler = torch.amp.GradScaler("cuda", init_scale=1000) if amp else None
        self.seed = self._run_seed()
        if tpt.LOAD:
            self.set_context(context_from_checkpoint(tpt.LOAD, tpt))
        else:
            self.set_context(WordsContext(tpt.CTX_INIT, tpt.N_CTX, seed=self.seed,
                                          class_token_position=tpt.CLASS_TOKEN_POSITION))

    def set_context(self, source: ContextSource) -> None:
        """Start every test image from ``source`` (words, or a checkpoint's context)."""
        self.context = source
        print(f"TPT: each test image starts from {source.describe()}")

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """``--model-dir/--load-epoch``: start from that CoOp/CoCoOp checkpoint (kind recognised by its keys)."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        if self.method_cfg.LOAD:
            raise UserValueError(f'Both --model-dir "{directory}" and TRAINER.TPT.LOAD "{self.method_cfg.LOAD}" name a '
                             "checkpoint to start from; give one")
        self.set_context(context_from_checkpoint(directory, self.method_cfg, epoch=epoch))

    def _run_seed(self) -> int:
        """``SEED``, or without one the seed of this output folder's earlier logs (so a resumed run draws the
        same views), or a fresh random one."""
        if self.cfg.SEED >= 0:
            return int(self.cfg.SEED)
        folder = osp.join(self.cfg.OUTPUT_DIR, PREDICTIONS_DIR) if self.cfg.OUTPUT_DIR else ""
        if folder and osp.isdir(folder):
            for name in sorted(os.listdir(folder)):
                with contextlib.suppress(OSError, ValueError, KeyError), open(osp.join(folder, name)) as handle:
                    return int(json.loads(handle.readline())["seed"])
        return secrets.randbelow(2**31)

    # ------------------------------------------------------------------------------------------ test
    def train(self) -> None:
        """Nothing to train: TPT tunes at test time."""
        self.test()

    def test(self, split: str | None = None) -> float:
        results: OrderedDict[str, OrderedDict] = OrderedDict()
        for set_name in self.set_names:
            metrics = self.evaluate_set(set_name, split or self.cfg.TEST.SPLIT)
            if metrics is not None:
                results[set_name] = metrics
        if len(self.set_names) > 1 and results:
            print_summary(results, self.settings.steps, self.settings.lr, self.settings.n_views)
        self.set_results = results
        if not results:
            self.test_results = OrderedDict()
            return 0.0
        if len(results) == 1:
            self.test_results = next(iter(results.values()))
        else:
            self.test_results = OrderedDict(
                accuracy=float(np.mean([r["accuracy"] for r in results.values()])),
                top5_accuracy=float(np.mean([r["top5_accuracy"] for r in results.values()])),
                images=int(sum(r["images"] for r in results.values())),
            )
        return self.test_results["accuracy"]

    def evaluate_set(self, set_name: str, split: str = "test") -> OrderedDict | None:
        """TPT on one dataset (this run's shard of it), continuing its prediction log; prints its results."""
        cfg, tpt = self.cfg, self.method_cfg
        dm = self._use_set(set_name)
        dataset = dm.dataset
        items = dataset.test if split == "test" or not dataset.val else dataset.val
        classnames = dataset.classnames
        aug = resolve_aug(tpt.AUG, self.set_names[set_name])
        maker = ViewMaker(clip_input_resolution(self.clip_model), tpt.N_VIEWS, aug == "augmix",
                          cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        print(f"evaluating: {set_name} ({len(items):,} {split} images, {len(classnames)} classes, views: "
              f"{'crop + flip + AugMix' if aug == 'augmix' else 'crop + flip'}"
              + (f", shard {shard_name(self.shard)}" if self.shard else "") + ")")

        learner = self.context.learner(classnames, self.clip_model).to(self.device)
        learner.requires_grad_(False)
        tuner = PromptTuner(learner, self.text_encoder, self.logit_scale, self.settings, self.scaler)
        header = self._log_header(set_name, split, items, classnames, aug)
        path = prediction_path(cfg.OUTPUT_DIR, set_name, self.shard) if cfg.OUTPUT_DIR else None
        log = PredictionLog(path, header)
        mine = shard_indices(len(items), self.shard)
        todo = [i for i in mine if i not in log.done]
        if log.done:
            print(f"Resuming: {len(mine) - len(todo):,} of {len(mine):,} images already done ({path})")
        self._progress = (set_name, len(mine) - len(todo), len(mine))  # for interruption_hint
        skipped = self._tune_items(items, todo, maker, learner, tuner, log)

        mine_set = set(mine)
        rows = [row for row in log.rows() if row["i"] in mine_set]
        if not rows:
            print(f"No test images of {set_name} in shard {shard_name(self.shard)}")
            return None
        if cfg.DATALOADER.SKIP_CORRUPT_IMAGES:  # left out before the run, and by the loader
            announce_skipped(len(dm.preskipped.get("test" if items is dataset.test else "val", [])) + skipped)
        results = report(rows, len(classnames), cfg, set_name, self.lab2cname)
        return results

    def _tune_items(self, items, todo, maker, learner, tuner, log) -> int:
        """Tune and predict the images ``todo``; returns how many were skipped as unreadable."""
        cfg, tpt = self.cfg, self.method_cfg
        if not todo:
            return 0
        on_device = bool(tpt.GPU_VIEWS)
        views_data = TPTViewDataset(items, todo, maker, self.seed, on_device=on_device,
                                    skip_corrupt=bool(cfg.DATALOADER.SKIP_CORRUPT_IMAGES))
        loader = DataLoader(
            views_data, batch_size=tpt.BATCH_IMAGES, shuffle=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=collate_views, pin_memory=self.device.type == "cuda",
        )
        batch_time, top1, top5 = _Meter("Time", "6.3f"), _Meter("Acc@1", "6.2f"), _Meter("Acc@5", "6.2f")
        digits = len(str(len(todo)))
        done, started, end = 0, time.time(), time.time()
        for batch in track(loader, total=len(todo), desc=f"TPT {log.header['set']}"):
            if batch is None:  # every image of this batch was skipped as unreadable
                continue
            if on_device:
                views = device_views(maker, batch, self.device)
            else:
                views = batch["views"].to(self.device, non_blocking=True)
            features = encode_views(self.image_encoder, views, chunk=cfg.DATALOADER.TEST.BATCH_SIZE,
                                    amp=self.settings.amp)
            init = self.context.initial_context(learner, features[:, 0])
            result = tuner.tune(normalize(features), init, same_start=self.context.shared)
            logits = result.logits.cpu()
            rows = [prediction_row(i, y, l) for i, y, l in zip(batch["index"].tolist(), batch["label"].tolist(), logits)]
            log.append(rows)
            set_name, logged, total = self._progress
            self._progress = (set_name, logged + len(rows), total)
            elapsed = (time.time() - end) / len(rows)
            for row in rows:
                batch_time.update(elapsed)
                top1.update(100.0 * (row["top5"][0] == row["y"]))
                top5.update(100.0 * (row["y"] in row["top5"]))
                if (done + 1) % tpt.PRINT_FREQ == 0:
                    print(f"Test: [{done:{digits}d}/{len(todo)}]\t{batch_time}\t{top1}\t{top5}")
                done += 1
            end = time.time()
        print(f" *  Acc@1 {top1.avg:.3f} Acc@5 {top5.avg:.3f}")
        seconds = time.time() - started
        print(f"TPT: {done:,} images in {seconds:.1f} s ({seconds / max(done, 1):.3f} s/image)")
        return len(views_data.skipped_indices)

    def interruption_hint(self) -> str:
        """Where a Ctrl-C stopped TPT: the image it was tuning and how many are logged (and kept)."""
        progress = getattr(self, "_progress", None)
        if progress is None:
            return "stopped before the first test image; run the same command again to start"
        set_name, logged, total = progress
        where = f"at image {min(logged + 1, total)} of {total} of {set_name}"
        if not self.cfg.OUTPUT_DIR:
            return f"stopped {where}; without an output directory nothing was kept"
        return (f"stopped {where} ({logged} predictions logged); run the same command again to continue from "
                "there")

    def fingerprint_extras(self) -> dict:
        """The CLIP weights' hash and where each image's prompt starts (words, or a checkpoint's tensors)."""
        return {**clip_fingerprint_extras(self.cfg), "tpt_init": self.context.fingerprint()}

    def _log_header(self, set_name: str, split: str, items, classnames, aug: str) -> dict:
        cfg, tpt = self.cfg, self.method_cfg
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT)) if cfg.DATASET.ROOT else ""
        digest = hashlib.sha256()
        for item in items:
            digest.update(f"{osp.relpath(item.impath, root) if root else item.impath}\t{item.label}\n".encode())
        detail = {
            "backbone": cfg.MODEL.BACKBONE.NAME, "n_views": tpt.N_VIEWS, "selection_p": tpt.SELECTION_P,
            "steps": tpt.STEPS, "lr": tpt.LR, "weight_decay": tpt.WEIGHT_DECAY, "aug": aug, "prec": self.prec,
            "gpu_views": bool(tpt.GPU_VIEWS), "init": self.context.fingerprint(),
            "pixel_mean": list(cfg.INPUT.PIXEL_MEAN), "pixel_std": list(cfg.INPUT.PIXEL_STD),
        }
        settings = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:12]
        return {
            "set": set_name, "dataset": self.set_names[set_name], "split": split, "num_items": len(items),
            "items_hash": digest.hexdigest()[:12], "num_classes": len(classnames), "classnames": list(classnames),
            "seed": self.seed, "settings": settings, "settings_detail": detail, "shard": shard_name(self.shard),
            "order": list(self.set_names).index(set_name),
            "weights_sha256": clip_fingerprint_extras(cfg)["weights_sha256"],
        }

    def run_record_extra(self) -> dict:
        """TPT's part of ``run.json``: ``tpt`` (initial context, settings, shard). The per-dataset metrics
        (``set_results``) are written by the run record itself as ``metrics_per_dataset``."""
        tpt = self.method_cfg
        extra = {
            "tpt": {
                "init": self.context.kind, "init_detail": self.context.describe(), "seed": self.seed,
                "shard": shard_name(self.shard), "test_sets": list(self.set_names), "n_views": tpt.N_VIEWS,
                "selection_p": tpt.SELECTION_P, "steps": tpt.STEPS, "lr": tpt.LR, "prec": self.prec,
                "batch_images": tpt.BATCH_IMAGES, "gpu_views": bool(tpt.GPU_VIEWS),
            },
        }
        if not self.cfg.DATASET.NAME:  # the datasets came from TRAINER.TPT.TEST_SETS
            extra["dataset"] = next(iter(self.set_names.values()))
        return extra
