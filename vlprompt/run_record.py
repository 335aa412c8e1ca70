"""``run.json``: what a run was (method, data, protocol, seed, code) and what it scored.

Written atomically next to ``log.txt`` when a run finishes, after every other output (the log
included) is on disk, so a table never has to guess a run's protocol from its folder name, and a
present ``run.json`` means the run is complete. ``fingerprint`` is the hash of the settings that change
results (the one its checkpoints carry); ``resumed_anyway`` records a resume with other settings.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.engine.config import config_hash
from vlprompt.engine.fingerprint import fingerprint, result_settings
from vlprompt.modeling.backbones.base import loaded_weights

RUN_RECORD = "run.json"
# 2: adds ``config`` (the full config), ``source_trainer`` and ``source_shots``.
# 3: adds ``engine`` ("builtin"/"dassl") and ``weights`` (the CLIP file, its sha256, its real architecture).
# Readers accept 1 to 3: every later field is an addition.
SCHEMA_VERSION = 3
IMAGENET_SHIFTS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
# Every value ``infer_protocol`` returns (documented in the README's run.json schema).
PROTOCOLS = (
    "few_shot", "full", "zeroshot", "base2new_train", "base2new_test_base", "base2new_test_new",
    "cross_dataset", "domain_generalization", "eval", "tpt",
)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    import vlprompt

    version = vlprompt.__version__
    repo = Path(vlprompt.__file__).resolve().parent.parent
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip()
            version += f"+g{commit}"
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def split_hash(dataset, root: str) -> str:
    """A short hash of the samples (path relative to the data root, label) in every split."""
    digest = hashlib.sha256()
    root = os.path.abspath(os.path.expanduser(root)) if root else ""
    for split in ("train_x", "val", "test"):
        items: Iterable = getattr(dataset, split, None) or []
        digest.update(split.encode())
        for item in items:
            path = os.path.relpath(item.impath, root) if root else item.impath
            digest.update(f"{path}\t{item.label}\n".encode())
    return digest.hexdigest()[:12]


def infer_protocol(cfg, eval_only: bool, source_record: dict | None) -> str:
    """The evaluation protocol a run belongs to (one of ``PROTOCOLS``), from its config and, for an
    evaluation of a trained model, that model's record.

    Base-to-novel runs are named by the classes they test: training on the base classes ends with a test
    on them (``base2new_train``); evaluations are ``base2new_test_base``/``base2new_test_new``, zero-shot
    CLIP included, since it is evaluated the same way.
    """
    trainer = cfg.TRAINER.NAME
    subsample = cfg.DATASET.SUBSAMPLE_CLASSES
    if trainer.upper().startswith("TPT"):
        return "tpt"
    zero_shot = trainer.startswith("ZeroshotCLIP")
    if subsample in ("base", "new"):
        if subsample == "base" and not eval_only and not zero_shot:
            return "base2new_train"
        return f"base2new_test_{subsample}"
    if zero_shot:
        return "zeroshot"
    if not eval_only:
        return "few_shot" if cfg.DATASET.NUM_SHOTS > 0 else "full"
    source = (source_record or {}).get("dataset")
    if source and source != cfg.DATASET.NAME:
        if source == "ImageNet" and cfg.DATASET.NAME in IMAGENET_SHIFTS:
            return "domain_generalization"
        return "cross_dataset"
    return "eval"


def is_deterministic(device: torch.device) -> bool:
    """CPU runs are; CUDA runs only with deterministic algorithms on and cuDNN benchmarking off."""
    if device.type != "cuda":
        return True
    return torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark


def read_run_record(directory: str | Path) -> dict | None:
    """The parsed ``run.json`` of ``directory``, or None when there is none (a JSON error propagates)."""
    path = Path(directory) / RUN_RECORD
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def weights_record(backbone: str) -> dict | None:
    """``run.json``'s ``weights``: the file the run's CLIP was built from, its sha256 and the architecture
    its tensors have; None when this process loaded no CLIP for ``backbone``."""
    info = loaded_weights(backbone)
    return info.as_record() if info is not None else None


def run_settings(cfg, trainer) -> dict:
    """The trainer's result-changing settings (with its extras, e.g. the weights' hash), else the config's."""
    settings = getattr(trainer, "run_settings", None)
    return settings() if callable(settings) else result_settings(cfg)


def write_run_record(cfg, trainer, *, eval_only: bool, model_dir: str, load_epoch: int | None,
                     started: str, log_file: str | None) -> Path:
    """Write ``OUTPUT_DIR/run.json`` for a finished run (atomically) and return its path."""
    # Imported here: with VLPROMPT_ENGINE=dassl, compat needs Dassl, and the tables import this module.
    from vlprompt.compat import ENGINE

    source_record = read_run_record(model_dir) if model_dir else None
    record = {
        "schema": SCHEMA_VERSION,
        "status": "complete",
        "trainer": cfg.TRAINER.NAME,
        "dataset": cfg.DATASET.NAME,
        "protocol": infer_protocol(cfg, eval_only, source_record),
        "shots": cfg.DATASET.NUM_SHOTS,
        "seed": cfg.SEED,
        "subsample": cfg.DATASET.SUBSAMPLE_CLASSES,
        "backbone": cfg.MODEL.BACKBONE.NAME,
        "engine": ENGINE,
        "weights": weights_record(cfg.MODEL.BACKBONE.NAME),
        "config_file_hash": config_hash(cfg),
        "fingerprint": fingerprint(run_settings(cfg, trainer)),
        "resumed_anyway": getattr(trainer, "resumed_anyway", None),
        "split_hash": split_hash(trainer.dm.dataset, cfg.DATASET.ROOT) if hasattr(trainer, "dm") else None,
        "num_classes": getattr(trainer, "num_classes", None),
        "eval_only": eval_only,
        "model_dir": os.path.abspath(model_dir) if model_dir else None,
        "source_dataset": (source_record or {}).get("dataset"),
        "source_trainer": (source_record or {}).get("trainer"),
        "source_shots": (source_record or {}).get("shots"),
        "load_epoch": load_epoch,
        "code_version": code_version(),
        "deterministic": is_deterministic(trainer.device),
        "device": str(trainer.device),
        "started": started,
        "finished": utc_now(),
        "log_file": os.path.basename(log_file) if log_file else None,
        "metrics": _plain(dict(trainer.test_results or {})),
        "config": _plain(cfg),
    }
    # A run that evaluates several datasets (TPT over TRAINER.TPT.TEST_SETS) keeps each one's metrics,
    # so tables get one entry per dataset rather than only the run's average.
    per_dataset = getattr(trainer, "set_results", None)
    if isinstance(per_dataset, dict) and per_dataset:
        record["metrics_per_dataset"] = _plain(dict(per_dataset))
    # Only when a class had fewer than DATASET.NUM_SHOTS images: the shots it really trained with.
    shots_per_class = getattr(getattr(getattr(trainer, "dm", None), "dataset", None), "shots_per_class", None)
    if shots_per_class:
        record["shots_per_class"] = dict(shots_per_class)
    # A trainer may add its own section (TPT: its settings, shard and per-dataset results).
    extra = getattr(trainer, "run_record_extra", None)
    if callable(extra):
        record.update(_plain(extra()))
    path = Path(cfg.OUTPUT_DIR) / RUN_RECORD
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path
