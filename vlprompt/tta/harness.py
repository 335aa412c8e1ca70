"""The test-time evaluation harness: every test-time method (TPT and its successors) runs on it.

The harness owns what does not depend on the method: the datasets of ``TEST_SETS`` (through the engine
selected in :mod:`vlprompt.compat`, so Dassl mode works), CLIP loaded once for all of them, the views of
each test image (made in loader workers or on the device), the per-image loop with its running meters,
prediction logs that make a killed run resume where it stopped, shards, the seed, the result blocks and
the run record. A method subclasses :class:`TestTimeTrainer` and supplies only

* :meth:`~TestTimeTrainer.build_method` – its settings and starting state, once CLIP is loaded;
* :meth:`~TestTimeTrainer.start_set` – its state for one class set (e.g. prompt learner and tuner);
* :meth:`~TestTimeTrainer.adapt` – its objective/update and prediction for a batch of test images,
  given their views' image features (logits, or an :class:`Adapted` with the predicted distribution and
  what the method logs per image);
* :meth:`~TestTimeTrainer.method_detail` / :meth:`~TestTimeTrainer.method_fingerprint` – what identifies
  its results (checked when a prediction log is continued).

A method may also override where it differs from TPT: :meth:`~TestTimeTrainer.view_settings` (views per dataset),
:meth:`~TestTimeTrainer.stream_order` and :meth:`~TestTimeTrainer.resume_set` (an online method: the
order images arrive in, and its state rebuilt from the images a killed run logged).

Every image's confidence goes into its log row, so each dataset's result block has the expected
calibration error (``ECE_BINS`` bins, :mod:`vlprompt.tta.calibration`) and ``OUTPUT_DIR/predictions.csv``
lists every prediction.

Its config node (``TRAINER.<cfg_node>``) holds the harness keys ``N_VIEWS``, ``AUG``, ``BATCH_IMAGES``,
``GPU_VIEWS``, ``SHARD``, ``TEST_SETS``, ``PRINT_FREQ``, ``PREC`` (``amp`` or ``fp32``) and ``ECE_BINS``
next to its own (:func:`add_test_time_keys`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import os.path as osp
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vlprompt.compat import DATASET_REGISTRY, DataManager
from vlprompt.engine.evaluation import announce_skipped
from vlprompt.engine.progress import track
from vlprompt.engine.trainer import adopt_data_manager
from vlprompt.errors import UserKeyError, UserValueError
from vlprompt.modeling import weights_fingerprint_extras
from vlprompt.prompt_trainer import ClipTrainer
from vlprompt.tta.calibration import DEFAULT_ECE_BINS
from vlprompt.tta.data import TPTViewDataset, collate_views, device_views
from vlprompt.tta.records import (
    PREDICTIONS_DIR,
    PredictionLog,
    add_timing,
    prediction_path,
    prediction_row,
    predictions_csv_path,
    print_summary,
    report,
    shard_from_config,
    shard_indices,
    shard_name,
    write_predictions_csv,
)
from vlprompt.tta.tuner import ViewEncoder
from vlprompt.tta.views import AUG_CHOICES, ViewMaker, resolve_aug

logger = logging.getLogger(__name__)  # `log` names the prediction log here

TEST_TIME_PRECISIONS = ("amp", "fp32")  # what a test-time method runs in (fp16 autocast on CUDA, or fp32)
# The reference's --test_sets ids → dataset names registered here (single letters are case-sensitive).
REFERENCE_SET_IDS = {
    "I": "ImageNet", "A": "ImageNetA", "V": "ImageNetV2", "R": "ImageNetR", "K": "ImageNetSketch",
    "dtd": "DescribableTextures", "flower102": "OxfordFlowers", "food101": "Food101", "cars": "StanfordCars",
    "sun397": "SUN397", "aircraft": "FGVCAircraft", "pets": "OxfordPets", "caltech101": "Caltech101",
    "ucf101": "UCF101", "eurosat": "EuroSAT",
}  # fmt: skip


def add_test_time_keys(node, n_views: int = 64, aug: str = "auto", prec: str = "amp") -> None:
    """The harness's keys in a test-time method's config node, with the method's view defaults."""
    node.N_VIEWS = n_views  # views per test image, the original included (the reference's -b)
    node.AUG = aug  # auto (the method's rule per dataset), crop or augmix
    node.PREC = prec  # amp (fp16 autocast on CUDA) or fp32
    node.BATCH_IMAGES = 1  # test images adapted at once (each independently; same result)
    node.GPU_VIEWS = False  # make the views on the model's device instead of in loader workers
    node.SHARD = ""  # "i/n": evaluate the i-th of n parts (else $VLPROMPT_TPT_SHARD)
    node.TEST_SETS = ""  # "/"-separated datasets (names or reference ids); "" = DATASET.NAME
    node.PRINT_FREQ = 200
    node.ECE_BINS = DEFAULT_ECE_BINS  # bins of the expected calibration error (C-TPT's code: 20)


@dataclass
class Adapted:
    """What :meth:`TestTimeTrainer.adapt` gives for B images: ``logits`` ``(B, n_cls)`` rank the classes;
    ``probs`` ``(B, n_cls)`` is the predicted distribution whose value at the prediction is its confidence
    (``softmax(logits)`` when None); ``extras`` one dict per image, logged in its row (what an online
    method needs to rebuild its state on resume)."""

    logits: torch.Tensor
    probs: torch.Tensor | None = None
    extras: list[dict] | None = None


def resolve_set_name(name: str, node: str = "TPT") -> str:
    """A dataset registered here, from its name or the reference's set id."""
    if name in DATASET_REGISTRY.registered_names():
        return name
    if name in REFERENCE_SET_IDS:
        return REFERENCE_SET_IDS[name]
    if len(name) > 1 and name.lower() in REFERENCE_SET_IDS:
        return REFERENCE_SET_IDS[name.lower()]
    raise UserKeyError(f'TRAINER.{node}.TEST_SETS: "{name}" is neither a registered dataset nor a reference set id; '
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


class TestTimeTrainer(ClipTrainer):
    """Evaluate a test-time method on the test split of every dataset in ``TEST_SETS`` (or DATASET.NAME)."""

    __test__ = False  # not a pytest test class, whatever its name says
    cfg_node = ""  # the method's TRAINER.<node>
    PROTOCOL = "tpt"  # the run records' protocol of every test-time method (tables put them together)

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.cfg_node]

    # ------------------------------------------------------------------------------- the method's part
    def method_problems(self, node) -> list[str]:
        """Problems with the method's own keys (one message with the harness's)."""
        return []

    def build_method(self) -> None:
        """Set up the method once CLIP is loaded (``self.clip``, ``self.image_encoder``, ``self.amp``)."""
        raise NotImplementedError

    def start_set(self, classnames: list[str]) -> Any:
        """The method's state for one class set, handed to every :meth:`adapt` call on that set."""
        raise NotImplementedError

    def adapt(self, state: Any, features: torch.Tensor) -> torch.Tensor | Adapted:
        """Logits ``(B, n_cls)`` of the original views (index 0) of B test images, given the unnormalised
        image features ``(B, N_VIEWS, E)`` of their views: the method's objective, update and prediction.
        An :class:`Adapted` adds the predicted distribution and what to log per image."""
        raise NotImplementedError

    def view_settings(self, set_name: str) -> tuple[int, str]:
        """(views per image, ``crop`` or ``augmix``) on one dataset: ``N_VIEWS`` and ``AUG`` (``auto``: crops
        for the ImageNet family, AugMix otherwise, as TPT)."""
        node = self.method_cfg
        return node.N_VIEWS, resolve_aug(node.AUG, self.set_names[set_name])

    def stream_order(self, set_name: str, indices: list[int]) -> list[int]:
        """The order the images ``indices`` (of one dataset) are adapted in; an online method's results
        depend on it. Episodic methods keep the index order."""
        return indices

    def resume_set(self, state: Any, rows: list[dict]) -> None:
        """Bring ``state`` to where a killed run stopped, from the rows it logged (in stream order); an
        episodic method has nothing to bring back."""

    def method_header(self, state: Any) -> dict:
        """What the method records in a dataset's prediction log header beside the settings (e.g. what a
        merge of shards needs to replay an online method)."""
        return {}

    def method_detail(self) -> dict:
        """The method's settings that change predictions (recorded in each prediction log's header)."""
        return {}

    def method_fingerprint(self) -> str:
        """Identifies the method's starting state (e.g. the initial prompt) for resume and result tables."""
        return ""

    def summary_params(self) -> tuple:
        """(steps, lr) for the reference's closing summary line."""
        return 0, 0.0

    def run_record_extra(self) -> dict:
        """The ``tpt`` section of ``run.json`` (the test-time section every method on the harness writes:
        start, seed, shard, datasets, views and the method's settings); the per-dataset metrics are written
        by the run record itself as ``metrics_per_dataset``."""
        node = self.method_cfg
        context = getattr(self, "context", None)
        extra = {
            "tpt": {
                "method": self.cfg_node, "init": context.kind if context is not None else "templates",
                "init_detail": context.describe() if context is not None else "", "seed": self.seed,
                "shard": shard_name(self.shard), "test_sets": list(self.set_names), "n_views": node.N_VIEWS,
                "prec": self.prec, "batch_images": node.BATCH_IMAGES, "gpu_views": bool(node.GPU_VIEWS),
                "seconds_per_image": dict(getattr(self, "seconds_per_image", {})), **self.method_detail(),
            },
        }
        if not self.cfg.DATASET.NAME:  # the datasets came from TEST_SETS
            extra["dataset"] = next(iter(self.set_names.values()))
        return extra

    # ---------------------------------------------------------------------------------------- config
    def check_cfg(self, cfg) -> None:
        node = cfg.TRAINER[self.cfg_node]
        problems = []
        if node.N_VIEWS < 1:
            problems.append(f"N_VIEWS is {node.N_VIEWS}; it counts the original view, so use >= 1")
        if node.BATCH_IMAGES < 1:
            problems.append(f"BATCH_IMAGES is {node.BATCH_IMAGES}; use >= 1")
        if node.PREC not in TEST_TIME_PRECISIONS:
            problems.append(f'PREC is "{node.PREC}"; use one of {", ".join(TEST_TIME_PRECISIONS)}')
        if node.AUG not in AUG_CHOICES:
            problems.append(f'AUG is "{node.AUG}"; use one of {", ".join(AUG_CHOICES)}')
        if node.get("ECE_BINS", DEFAULT_ECE_BINS) < 1:
            problems.append(f"ECE_BINS is {node.ECE_BINS}; use >= 1")
        problems[1:1] = self.method_problems(node)  # in the order the keys are listed
        if problems:
            raise UserValueError(f"TRAINER.{self.cfg_node}: " + "; ".join(problems))
        self.shard = shard_from_config(node.SHARD)

    # ------------------------------------------------------------------------------------------ data
    def build_data_loader(self) -> None:
        node = self.method_cfg
        names = [n.strip() for n in node.TEST_SETS.replace(",", "/").split("/") if n.strip()]
        if not names:
            if not self.cfg.DATASET.NAME:
                raise UserValueError(f"{self.cfg_node} needs a dataset: pass --dataset-config-file or set "
                                     f"TRAINER.{self.cfg_node}.TEST_SETS")
            names = [self.cfg.DATASET.NAME]
        import vlprompt.datasets  # noqa: F401 - registers the bundled datasets before names are resolved

        self.set_names = OrderedDict((name, resolve_set_name(name, self.cfg_node)) for name in names)
        self._managers: dict[str, Any] = {}
        self._use_set(next(iter(self.set_names)))

    def _data_manager(self, set_name: str):
        if set_name not in self._managers:
            cfg = self.cfg.clone()
            cfg.defrost()
            cfg.DATASET.NAME = self.set_names[set_name]
            cfg.freeze()
            # Keep one: a dataset's item list can be large. Only the evaluated split's images are checked
            # (the built-in engine's option; Dassl's data manager has no such check).
            options = {} if DataManager.__module__.startswith("dassl") else {"check_splits": ("val", "test")}
            self._managers = {set_name: DataManager(cfg, **options)}
        return self._managers[set_name]

    def _use_set(self, set_name: str):
        dm = self._data_manager(set_name)
        adopt_data_manager(self, dm)
        return dm

    # ----------------------------------------------------------------------------------------- model
    def build_model(self) -> None:
        node = self.method_cfg
        # The cached model is shared with other trainers in this process: the harness works on an fp32 copy.
        self.build_clip("fp32", cached=True)
        self.clip_model = self.clip.model
        self.image_encoder = self.clip.adapter.visual
        self.amp = node.PREC == "amp" and self.device.type == "cuda"
        if node.PREC == "amp" and not self.amp:
            logger.info(f"{self.cfg_node}: PREC amp needs CUDA; running in fp32")
        self.prec = "amp" if self.amp else "fp32"
        # BatchNorm folded, memory reused across images (views in heap-sized chunks on the CPU).
        self.view_encoder = ViewEncoder(self.image_encoder, self.clip.preprocess.size, self.device,
                                        self.cfg.DATALOADER.TEST.BATCH_SIZE, amp=self.amp)
        self.seed = self._run_seed()
        self.build_method()

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
        """Nothing to train: the method adapts at test time."""
        self.test()

    def test(self, split: str | None = None) -> float:
        results: OrderedDict[str, OrderedDict] = OrderedDict()
        self.seconds_per_image: dict[str, float] = {}
        for set_name in self.set_names:
            metrics = self.evaluate_set(set_name, split or self.cfg.TEST.SPLIT)
            if metrics is not None:
                results[set_name] = metrics
        if len(self.set_names) > 1 and results:
            print_summary(results, *self.summary_params(), self.method_cfg.N_VIEWS)
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
            if all("ece" in r for r in results.values()):
                self.test_results["ece"] = float(np.mean([r["ece"] for r in results.values()]))
        return self.test_results["accuracy"]

    def evaluate_set(self, set_name: str, split: str = "test") -> OrderedDict | None:
        """The method on one dataset (this run's shard of it), continuing its prediction log; prints its results."""
        cfg, node = self.cfg, self.method_cfg
        dm = self._use_set(set_name)
        dataset = dm.dataset
        items = dataset.test if split == "test" or not dataset.val else dataset.val
        classnames = dataset.classnames
        n_views, aug = self.view_settings(set_name)
        maker = ViewMaker(self.clip.preprocess.size, n_views, aug == "augmix", cfg.INPUT.PIXEL_MEAN,
                          cfg.INPUT.PIXEL_STD)
        views = "the original only" if n_views == 1 else "crop + flip + AugMix" if aug == "augmix" else "crop + flip"
        logger.info(f"evaluating: {set_name} ({len(items):,} {split} images, {len(classnames)} classes, views: {views}"
                    + (f", shard {shard_name(self.shard)}" if self.shard else "") + ")")

        # What start_set is for (a method's settings may depend on the dataset; an online method's stream
        # on the number of images).
        self.current_set, self.current_size = set_name, len(items)
        state = self.start_set(classnames)
        header = {**self._log_header(set_name, split, items, classnames, aug, n_views), **self.method_header(state)}
        path = prediction_path(cfg.OUTPUT_DIR, set_name, self.shard) if cfg.OUTPUT_DIR else None
        log = PredictionLog(path, header)
        mine = self.stream_order(set_name, shard_indices(len(items), self.shard))
        todo = [i for i in mine if i not in log.done]
        if log.done:
            logger.info(f"Resuming: {len(mine) - len(todo):,} of {len(mine):,} images already done ({path})")
            self.resume_set(state, [log.done[i] for i in mine if i in log.done])
        self._progress = (set_name, len(mine) - len(todo), len(mine))  # for interruption_hint
        skipped, timed = self._adapt_items(items, todo, maker, state, log)

        mine_set = set(mine)
        rows = [row for row in log.rows() if row["i"] in mine_set]
        if not rows:
            logger.info(f"No test images of {set_name} in shard {shard_name(self.shard)}")
            return None
        if cfg.DATALOADER.SKIP_CORRUPT_IMAGES:  # left out before the run, and by the loader
            preskipped = getattr(dm, "preskipped", {})
            announce_skipped(len(preskipped.get("test" if items is dataset.test else "val", [])) + skipped)
        metrics = report(rows, len(classnames), cfg, set_name, self.lab2cname,
                         ece_bins=node.get("ECE_BINS", DEFAULT_ECE_BINS))
        seconds = add_timing(path, *timed)  # kept beside the metrics, over every run that added to this log
        if seconds is not None:
            self.seconds_per_image[set_name] = seconds
        self._write_predictions_csv(set_name, classnames, rows)
        return metrics

    def _write_predictions_csv(self, set_name: str, classnames, rows: list[dict]) -> None:
        """``predictions.csv`` with the datasets evaluated so far in this run (rebuilt after each one)."""
        if not self.cfg.OUTPUT_DIR:
            return
        done = getattr(self, "_csv_sets", OrderedDict())
        done[set_name] = (set_name, list(classnames), rows)
        self._csv_sets = done
        write_predictions_csv(predictions_csv_path(self.cfg.OUTPUT_DIR, self.shard), done.values())

    def _adapt_items(self, items, todo, maker, state, log) -> tuple[int, tuple[int, float]]:
        """Adapt to and predict the images ``todo``; returns how many were skipped as unreadable and (images
        done, seconds they took)."""
        cfg, node = self.cfg, self.method_cfg
        if not todo:
            return 0, (0, 0.0)
        on_device = bool(node.GPU_VIEWS)
        views_data = TPTViewDataset(items, todo, maker, self.seed, on_device=on_device,
                                    skip_corrupt=bool(cfg.DATALOADER.SKIP_CORRUPT_IMAGES))
        loader = DataLoader(
            views_data, batch_size=node.BATCH_IMAGES, shuffle=False, num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=collate_views, pin_memory=self.device.type == "cuda",
        )
        batch_time, top1, top5 = _Meter("Time", "6.3f"), _Meter("Acc@1", "6.2f"), _Meter("Acc@5", "6.2f")
        digits = len(str(len(todo)))
        done, started, end = 0, time.time(), time.time()
        for batch in track(loader, total=len(todo), desc=f"{self.cfg_node} {log.header['set']}"):
            if batch is None:  # every image of this batch was skipped as unreadable
                continue
            if on_device:
                views = device_views(maker, batch, self.device)
            else:
                views = batch["views"].to(self.device, non_blocking=True)
            features = self.view_encoder(views)
            rows = self._rows(items, batch, self.adapt(state, features))
            log.append(rows)
            set_name, logged, total = self._progress
            self._progress = (set_name, logged + len(rows), total)
            elapsed = (time.time() - end) / len(rows)
            for row in rows:
                batch_time.update(elapsed)
                top1.update(100.0 * (row["top5"][0] == row["y"]))
                top5.update(100.0 * (row["y"] in row["top5"]))
                if (done + 1) % node.PRINT_FREQ == 0:
                    logger.info(f"Test: [{done:{digits}d}/{len(todo)}]\t{batch_time}\t{top1}\t{top5}")
                done += 1
            end = time.time()
        logger.info(f" *  Acc@1 {top1.avg:.3f} Acc@5 {top5.avg:.3f}")
        seconds = time.time() - started
        logger.info(f"{self.cfg_node}: {done:,} images in {seconds:.1f} s ({seconds / max(done, 1):.3f} s/image)")
        return len(views_data.skipped_indices), (done, seconds)

    def _rows(self, items, batch: dict, adapted: torch.Tensor | Adapted) -> list[dict]:
        """The log rows of a batch: top-5, confidence, image path and the method's extras per image."""
        if not isinstance(adapted, Adapted):
            adapted = Adapted(adapted)
        logits = adapted.logits.detach().float().cpu()
        probs = adapted.probs.detach().float().cpu() if adapted.probs is not None else logits.softmax(-1)
        extras = adapted.extras or [None] * len(logits)
        root = osp.abspath(osp.expanduser(self.cfg.DATASET.ROOT)) if self.cfg.DATASET.ROOT else ""
        rows = []
        for k, (i, y) in enumerate(zip(batch["index"].tolist(), batch["label"].tolist())):
            path = items[i].impath
            image = osp.relpath(path, root) if root and osp.isabs(path) else path
            rows.append(prediction_row(i, y, logits[k], probs[k], image, extras[k]))
        return rows

    def interruption_hint(self) -> str:
        """Where a Ctrl-C stopped the run: the image it was adapting to and how many are logged (and kept)."""
        progress = getattr(self, "_progress", None)
        if progress is None:
            return "stopped before the first test image; run the same command again to start"
        set_name, logged, total = progress
        where = f"at image {min(logged + 1, total)} of {total} of {set_name}"
        if not self.cfg.OUTPUT_DIR:
            return f"stopped {where}; without an output directory nothing was kept"
        return (f"stopped {where} ({logged} predictions logged); run the same command again to continue from "
                "there")

    # ------------------------------------------------------------------------------------- identity
    def fingerprint_extras(self) -> dict:
        """The CLIP weights' hash and the method's starting state."""
        return {**weights_fingerprint_extras(self.cfg), f"{self.cfg_node.lower()}_init": self.method_fingerprint()}

    def _log_header(self, set_name: str, split: str, items, classnames, aug: str, n_views: int) -> dict:
        cfg, node = self.cfg, self.method_cfg
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT)) if cfg.DATASET.ROOT else ""
        digest = hashlib.sha256()
        for item in items:
            digest.update(f"{osp.relpath(item.impath, root) if root else item.impath}\t{item.label}\n".encode())
        detail = {
            "backbone": cfg.MODEL.BACKBONE.NAME, "n_views": n_views, **self.method_detail(), "aug": aug,
            "prec": self.prec, "gpu_views": bool(node.GPU_VIEWS), "init": self.method_fingerprint(),
            "pixel_mean": list(cfg.INPUT.PIXEL_MEAN), "pixel_std": list(cfg.INPUT.PIXEL_STD),
        }
        settings = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:12]
        return {
            "method": self.cfg_node, "set": set_name, "dataset": self.set_names[set_name], "split": split,
            "num_items": len(items),
            "items_hash": digest.hexdigest()[:12], "num_classes": len(classnames), "classnames": list(classnames),
            "seed": self.seed, "settings": settings, "settings_detail": detail, "shard": shard_name(self.shard),
            "order": list(self.set_names).index(set_name), "ece_bins": node.get("ECE_BINS", DEFAULT_ECE_BINS),
            "weights_sha256": weights_fingerprint_extras(cfg)["weights_sha256"],
        }
