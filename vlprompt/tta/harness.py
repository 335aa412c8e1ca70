"""The test-time evaluation harness: every test-time method (TPT and its successors) runs on it.

The harness owns what does not depend on the method: the datasets of ``TEST_SETS`` (through the engine
selected in :mod:`vlprompt.compat`, so Dassl mode works), CLIP loaded once for all of them, the views of
each test image (made in loader workers or on the device), the per-image loop with its running meters,
prediction logs that make a killed run resume where it stopped, shards, the seed, the result blocks and
the run record. A method subclasses :class:`TestTimeTrainer` and supplies only

* :meth:`~TestTimeTrainer.build_method` – its settings and starting state, once CLIP is loaded;
* :meth:`~TestTimeTrainer.start_set` – its state for one class set (e.g. prompt learner and tuner);
* :meth:`~TestTimeTrainer.adapt` – its objective/update and prediction for a batch of test images,
  given their views' image features;
* :meth:`~TestTimeTrainer.method_detail` / :meth:`~TestTimeTrainer.method_fingerprint` – what identifies
  its results (checked when a prediction log is continued).

Its config node (``TRAINER.<cfg_node>``) holds the harness keys ``N_VIEWS``, ``AUG``, ``BATCH_IMAGES``,
``GPU_VIEWS``, ``SHARD``, ``TEST_SETS``, ``PRINT_FREQ`` and ``PREC`` (``amp`` or ``fp32``) next to its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import os.path as osp
import secrets
import time
from collections import OrderedDict
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
from vlprompt.tta.tuner import ViewEncoder
from vlprompt.tta.views import AUG_CHOICES, ViewMaker, resolve_aug

TEST_TIME_PRECISIONS = ("amp", "fp32")  # what a test-time method runs in (fp16 autocast on CUDA, or fp32)
# The reference's --test_sets ids → dataset names registered here (single letters are case-sensitive).
REFERENCE_SET_IDS = {
    "I": "ImageNet", "A": "ImageNetA", "V": "ImageNetV2", "R": "ImageNetR", "K": "ImageNetSketch",
    "dtd": "DescribableTextures", "flower102": "OxfordFlowers", "food101": "Food101", "cars": "StanfordCars",
    "sun397": "SUN397", "aircraft": "FGVCAircraft", "pets": "OxfordPets", "caltech101": "Caltech101",
    "ucf101": "UCF101", "eurosat": "EuroSAT",
}  # fmt: skip


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

    def adapt(self, state: Any, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_cls)`` of the original views (index 0) of B test images, given the unnormalised
        image features ``(B, N_VIEWS, E)`` of their views: the method's objective, update and prediction."""
        raise NotImplementedError

    def method_detail(self) -> dict:
        """The method's settings that change predictions (recorded in each prediction log's header)."""
        return {}

    def method_fingerprint(self) -> str:
        """Identifies the method's starting state (e.g. the initial prompt) for resume and result tables."""
        return ""

    def summary_params(self) -> tuple:
        """(steps, lr) for the reference's closing summary line."""
        return 0, 0.0

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
            print(f"{self.cfg_node}: PREC amp needs CUDA; running in fp32")
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
        return self.test_results["accuracy"]

    def evaluate_set(self, set_name: str, split: str = "test") -> OrderedDict | None:
        """The method on one dataset (this run's shard of it), continuing its prediction log; prints its results."""
        cfg, node = self.cfg, self.method_cfg
        dm = self._use_set(set_name)
        dataset = dm.dataset
        items = dataset.test if split == "test" or not dataset.val else dataset.val
        classnames = dataset.classnames
        aug = resolve_aug(node.AUG, self.set_names[set_name])
        maker = ViewMaker(self.clip.preprocess.size, node.N_VIEWS, aug == "augmix",
                          cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        print(f"evaluating: {set_name} ({len(items):,} {split} images, {len(classnames)} classes, views: "
              f"{'crop + flip + AugMix' if aug == 'augmix' else 'crop + flip'}"
              + (f", shard {shard_name(self.shard)}" if self.shard else "") + ")")

        state = self.start_set(classnames)
        header = self._log_header(set_name, split, items, classnames, aug)
        path = prediction_path(cfg.OUTPUT_DIR, set_name, self.shard) if cfg.OUTPUT_DIR else None
        log = PredictionLog(path, header)
        mine = shard_indices(len(items), self.shard)
        todo = [i for i in mine if i not in log.done]
        if log.done:
            print(f"Resuming: {len(mine) - len(todo):,} of {len(mine):,} images already done ({path})")
        self._progress = (set_name, len(mine) - len(todo), len(mine))  # for interruption_hint
        skipped = self._adapt_items(items, todo, maker, state, log)

        mine_set = set(mine)
        rows = [row for row in log.rows() if row["i"] in mine_set]
        if not rows:
            print(f"No test images of {set_name} in shard {shard_name(self.shard)}")
            return None
        if cfg.DATALOADER.SKIP_CORRUPT_IMAGES:  # left out before the run, and by the loader
            preskipped = getattr(dm, "preskipped", {})
            announce_skipped(len(preskipped.get("test" if items is dataset.test else "val", [])) + skipped)
        return report(rows, len(classnames), cfg, set_name, self.lab2cname)

    def _adapt_items(self, items, todo, maker, state, log) -> int:
        """Adapt to and predict the images ``todo``; returns how many were skipped as unreadable."""
        cfg, node = self.cfg, self.method_cfg
        if not todo:
            return 0
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
            logits = self.adapt(state, features).cpu()
            rows = [prediction_row(i, y, l) for i, y, l in zip(batch["index"].tolist(), batch["label"].tolist(), logits)]
            log.append(rows)
            set_name, logged, total = self._progress
            self._progress = (set_name, logged + len(rows), total)
            elapsed = (time.time() - end) / len(rows)
            for row in rows:
                batch_time.update(elapsed)
                top1.update(100.0 * (row["top5"][0] == row["y"]))
                top5.update(100.0 * (row["y"] in row["top5"]))
                if (done + 1) % node.PRINT_FREQ == 0:
                    print(f"Test: [{done:{digits}d}/{len(todo)}]\t{batch_time}\t{top1}\t{top5}")
                done += 1
            end = time.time()
        print(f" *  Acc@1 {top1.avg:.3f} Acc@5 {top5.avg:.3f}")
        seconds = time.time() - started
        print(f"{self.cfg_node}: {done:,} images in {seconds:.1f} s ({seconds / max(done, 1):.3f} s/image)")
        return len(views_data.skipped_indices)

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

    def _log_header(self, set_name: str, split: str, items, classnames, aug: str) -> dict:
        cfg, node = self.cfg, self.method_cfg
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT)) if cfg.DATASET.ROOT else ""
        digest = hashlib.sha256()
        for item in items:
            digest.update(f"{osp.relpath(item.impath, root) if root else item.impath}\t{item.label}\n".encode())
        detail = {
            "backbone": cfg.MODEL.BACKBONE.NAME, "n_views": node.N_VIEWS, **self.method_detail(), "aug": aug,
            "prec": self.prec, "gpu_views": bool(node.GPU_VIEWS), "init": self.method_fingerprint(),
            "pixel_mean": list(cfg.INPUT.PIXEL_MEAN), "pixel_std": list(cfg.INPUT.PIXEL_STD),
        }
        settings = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()[:12]
        return {
            "set": set_name, "dataset": self.set_names[set_name], "split": split, "num_items": len(items),
            "items_hash": digest.hexdigest()[:12], "num_classes": len(classnames), "classnames": list(classnames),
            "seed": self.seed, "settings": settings, "settings_detail": detail, "shard": shard_name(self.shard),
            "order": list(self.set_names).index(set_name),
            "weights_sha256": weights_fingerprint_extras(cfg)["weights_sha256"],
        }
