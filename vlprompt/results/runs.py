"""Finding the runs under an output folder: their ``run.json`` records, or their logs where there is none.

Every run folder (one holding ``run.json`` or a ``log.txt``) becomes a :class:`Run` with the same fields
whichever it came from; a folder that cannot be read becomes a :class:`Problem` naming it and the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from vlprompt.results.logs import (
    RESULT_METRICS,
    parse_bool,
    parse_log_lines,
    read_arguments,
    read_config_dump,
    read_lines,
    run_logs,
)
from vlprompt.run_record import RUN_RECORD, infer_protocol

# The paper tables' datasets (DATASET.NAME), in the order CoOp/CoCoOp print them.
FEW_SHOT_DATASETS = (
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
    "SUN397", "DescribableTextures", "EuroSAT", "UCF101",
)
XD_TARGETS = FEW_SHOT_DATASETS[1:]
DG_TARGETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
TPT_SHIFT_SETS = ("ImageNet", "ImageNetA", "ImageNetV2", "ImageNetR", "ImageNetSketch")
# A source dataset and its distribution shifts in TPT's column order (the toy world's mirror ImageNet's).
SHIFT_SETS = {
    "ImageNet": TPT_SHIFT_SETS,
    "ToyWorld": ("ToyWorld", "ToyWorldA", "ToyWorldR", "ToyWorldSketch"),
}
TPT_FINE_GRAINED = (
    "OxfordFlowers", "DescribableTextures", "OxfordPets", "StanfordCars", "UCF101", "Caltech101", "Food101",
    "SUN397", "FGVCAircraft", "EuroSAT",
)
KNOWN_DATASETS = FEW_SHOT_DATASETS + DG_TARGETS
DISPLAY_NAMES = {
    "OxfordFlowers": "Flowers102", "DescribableTextures": "DTD", "ImageNetV2": "ImageNet-V2",
    "ImageNetSketch": "ImageNet-Sketch", "ImageNetA": "ImageNet-A", "ImageNetR": "ImageNet-R",
}
# Other spellings of a dataset: TPT's set ids and CoOp's config-file stems.
DATASET_ALIASES = {
    "I": "ImageNet", "A": "ImageNetA", "V": "ImageNetV2", "R": "ImageNetR", "K": "ImageNetSketch",
    "DTD": "DescribableTextures", "Flower102": "OxfordFlowers", "Flowers102": "OxfordFlowers",
    "Cars": "StanfordCars", "Aircraft": "FGVCAircraft", "Pets": "OxfordPets", "eurosat": "EuroSAT",
    "caltech101": "Caltech101", "dtd": "DescribableTextures", "fgvc_aircraft": "FGVCAircraft",
    "food101": "Food101", "imagenet": "ImageNet", "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR",
    "imagenet_sketch": "ImageNetSketch", "imagenetv2": "ImageNetV2", "oxford_flowers": "OxfordFlowers",
    "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars", "sun397": "SUN397", "ucf101": "UCF101",
}


def canonical_dataset(name: str) -> str:
    """``DATASET.NAME`` for any spelling in ``DATASET_ALIASES``; other names are kept as they are."""
    if name in KNOWN_DATASETS:
        return name
    return DATASET_ALIASES.get(name, name)


def display_name(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


@dataclass
class Run:
    """One evaluation result with what produced it. ``origin`` is ``run.json`` or the log file read."""

    directory: str
    origin: str
    trainer: str
    dataset: str
    protocol: str
    shots: int
    seed: int
    subsample: str
    backbone: str
    metrics: dict[str, float]
    eval_only: bool = False
    model_dir: str | None = None
    load_epoch: int | None = None
    source_dataset: str | None = None
    finished: str = ""
    config: dict | None = None
    record: dict | None = None

    def metric(self, name: str = "accuracy") -> float | None:
        value = self.metrics.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def field_value(self, name: str) -> Any:
        """A run field, a run.json key or dotted path (``backbone``, ``tpt.init``), else a dotted config key
        (``TRAINER.COOP.N_CTX``, ``SEED``); None when there is no such value."""
        if name in self.__dataclass_fields__:
            return getattr(self, name)
        for root in (self.record, self.config):
            node: Any = root or {}
            for part in name.split("."):
                if not isinstance(node, dict) or part not in node:
                    break
                node = node[part]
            else:
                return node
        return None


@dataclass
class Problem:
    """A run folder that gave no result, and why."""

    directory: str
    reason: str

    def __str__(self) -> str:
        return f"{self.directory}: {self.reason}"


@dataclass
class Collection:
    runs: list[Run] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _int(value: Any, default: int = -1) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _optional_int(value: Any) -> int | None:
    number = _int(value, default=-1)
    return None if number < 0 or value in (None, "", "None") else number


def runs_from_record(directory: str, record: dict) -> list[Run]:
    """The runs a ``run.json`` describes: one, or one per dataset when it has ``metrics_per_dataset``
    (a TPT run over several test sets; ``metrics`` then holds their average)."""
    missing = [key for key in ("trainer", "dataset", "metrics") if key not in record]
    if missing:
        raise ValueError(f"{RUN_RECORD} lacks {', '.join(missing)}")
    metrics = record["metrics"]
    if not isinstance(metrics, dict):
        raise TypeError(f'{RUN_RECORD}: "metrics" is {type(metrics).__name__}, not an object')
    per_dataset = record.get("metrics_per_dataset")
    if not isinstance(per_dataset, dict) or not per_dataset:
        per_dataset = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    groups = per_dataset if per_dataset else {record["dataset"]: metrics}
    section = record.get("tpt") if isinstance(record.get("tpt"), dict) else {}
    timing = section.get("seconds_per_image") if isinstance(section.get("seconds_per_image"), dict) else {}
    runs = []
    for dataset, values in groups.items():
        if not isinstance(values, dict):
            raise TypeError(f'{RUN_RECORD}: the metrics of "{dataset}" are {type(values).__name__}, not an object')
        if isinstance(timing.get(dataset), (int, float)):  # a test-time run's cost, kept beside its metrics
            values = {**values, "seconds_per_image": timing[dataset]}
        runs.append(Run(
            directory=directory,
            origin=RUN_RECORD,
            trainer=str(record["trainer"]),
            dataset=canonical_dataset(str(dataset)),
            protocol=str(record.get("protocol") or "eval"),
            shots=_int(record.get("shots")),
            seed=_int(record.get("seed")),
            subsample=str(record.get("subsample") or "all"),
            backbone=str(record.get("backbone") or ""),
            metrics={k: v for k, v in values.items() if isinstance(v, (int, float))},
            eval_only=bool(record.get("eval_only", False)),
            model_dir=record.get("model_dir"),
            load_epoch=_optional_int(record.get("load_epoch")),
            source_dataset=record.get("source_dataset"),
            finished=str(record.get("finished") or ""),
            config=record.get("config"),
            record=record,
        ))
    return runs


def resolve_model_dir(model_dir: str | None, near: Sequence[str]) -> str | None:
    """An existing folder for ``model_dir`` as written by a run: as is (absolute, or relative to the
    current folder), else relative to ``near`` or one of its parents; the output tree may have moved, so a
    trailing part of the path is tried too."""
    if not model_dir:
        return None
    if os.path.isdir(model_dir):
        return os.path.realpath(model_dir)
    parts = Path(model_dir).parts
    bases: list[Path] = []
    for base in near:
        bases += [Path(base), *Path(base).resolve().parents]
    for start in range(len(parts)):
        tail = Path(*parts[start:])
        if tail.is_absolute():
            continue
        for base in bases:
            candidate = base / tail
            if candidate.is_dir():
                return os.path.realpath(candidate)
    return None


def _source_dataset(model_dir: str | None, near: Sequence[str]) -> str | None:
    """The dataset the model in ``model_dir`` was trained on, from its record or its log's config."""
    resolved = resolve_model_dir(model_dir, near)
    if resolved is None:
        return None
    record_path = os.path.join(resolved, RUN_RECORD)
    if os.path.isfile(record_path):
        try:
            return json.loads(Path(record_path).read_text(encoding="utf-8")).get("dataset")
        except (OSError, ValueError):
            pass
    for path in reversed(run_logs(resolved)):
        config = read_config_dump(read_lines(path))
        if config and isinstance(config.get("DATASET"), dict):
            return config["DATASET"].get("NAME")
    return None


def run_from_logs(directory: str, near: Sequence[str]) -> tuple[Run | None, str, list[str]]:
    """A run rebuilt from its newest log with a result: the config printed at the top of the log says
    what ran, the result block what it scored. Returns (run or None, reason, notes)."""
    logs = run_logs(directory)
    if not logs:
        return None, "no run.json and no log.txt", []
    failures: list[str] = []
    for path in reversed(logs):
        name = os.path.basename(path)
        try:
            lines = read_lines(path)
        except OSError as err:
            failures.append(f"{name}: cannot read ({err})")
            continue
        args = read_arguments(lines)
        eval_only = parse_bool(args.get("eval_only")) if "eval_only" in args else None
        parsed = parse_log_lines(lines, path, tuple(RESULT_METRICS), test_log=eval_only)
        if not parsed.values:
            failures.append(f"{name}: {parsed.reason}")
            continue
        config = read_config_dump(lines)
        if not config or not isinstance(config.get("DATASET"), dict) or not isinstance(config.get("TRAINER"), dict):
            failures.append(f"{name}: has a result but no readable '** Config **' block to tell what ran")
            continue
        cfg = CfgNode(config)
        # Logs of Dassl versions before CoCoOp have no SUBSAMPLE_CLASSES (and some no NUM_SHOTS).
        cfg.DATASET.setdefault("SUBSAMPLE_CLASSES", "all")
        cfg.DATASET.setdefault("NUM_SHOTS", -1)
        model_dir = args.get("model_dir") or None
        source = _source_dataset(model_dir, near) if eval_only and model_dir else None
        try:
            protocol = infer_protocol(cfg, bool(eval_only), {"dataset": source} if source else None)
            trainer = str(cfg.TRAINER.NAME)
            dataset = str(cfg.DATASET.NAME)
        except (AttributeError, TypeError) as err:
            failures.append(f"{name}: config block lacks a key ({err})")
            continue
        run = Run(
            directory=directory,
            origin=name,
            trainer=trainer,
            dataset=canonical_dataset(dataset),
            protocol=protocol,
            shots=_int(cfg.DATASET.get("NUM_SHOTS")),
            seed=_int(config.get("SEED")),
            subsample=str(cfg.DATASET.get("SUBSAMPLE_CLASSES") or "all"),
            backbone=str((config.get("MODEL") or {}).get("BACKBONE", {}).get("NAME") or ""),
            metrics={RESULT_METRICS[k]: v for k, v in parsed.values.items()},
            eval_only=bool(eval_only),
            model_dir=model_dir,
            load_epoch=_optional_int(args.get("load_epoch")) if model_dir else None,
            source_dataset=source,
            finished=_mtime_iso(path),
            config=config,
        )
        notes = [f"{directory}: {failure} (a newer run; using {name})" for failure in failures]
        return run, "", notes
    return None, "; ".join(reversed(failures)), []


def _mtime_iso(path: str) -> str:
    import datetime

    stamp = os.path.getmtime(path)
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).isoformat(timespec="seconds")


def is_run_folder(filenames: Iterable[str]) -> bool:
    return any(n == RUN_RECORD or n == "log.txt" or n.startswith("log.txt-") for n in filenames)


def collect_runs(roots: str | Sequence[str]) -> Collection:
    """Every run under ``roots`` (folders searched recursively, in sorted order)."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    collection = Collection()
    for root in roots:
        root = str(root)
        if not os.path.isdir(root):
            collection.problems.append(Problem(root, "not a folder"))
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if not is_run_folder(filenames):
                continue
            _add_run_folder(collection, dirpath, filenames, near=[root])
    return collection


def runs_in_folder(directory: str, near: Sequence[str] = ()) -> Collection:
    """The runs of the one run folder ``directory``, read as :func:`collect_runs` reads them (e.g. the model
    an evaluation loaded, when it lies outside the folders given)."""
    collection = Collection()
    try:
        names = os.listdir(directory)
    except OSError as err:
        collection.problems.append(Problem(directory, f"cannot list ({err})"))
        return collection
    if is_run_folder(names):
        _add_run_folder(collection, directory, names, near=list(near) or [directory])
    return collection


def _add_run_folder(collection: Collection, directory: str, filenames: Iterable[str], near: Sequence[str]) -> None:
    record_problem = ""
    if RUN_RECORD in filenames:
        try:
            record = json.loads(Path(directory, RUN_RECORD).read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise TypeError(f"{RUN_RECORD} is not a JSON object")
            shard = (record.get("tpt") or {}).get("shard") if isinstance(record.get("tpt"), dict) else None
            if shard:
                collection.notes.append(f"{directory}: shard {shard} of a TPT run, left out (a shard is only part "
                                        "of a result)")
                return
            collection.runs.extend(runs_from_record(directory, record))
            return
        except (OSError, ValueError, TypeError) as err:
            record_problem = f"unreadable {RUN_RECORD} ({err})"
    run, reason, notes = run_from_logs(directory, near)
    collection.notes.extend(notes)
    if run is not None:
        if record_problem:
            collection.notes.append(f"{directory}: {record_problem}; read {run.origin} instead")
        collection.runs.append(run)
        return
    reason = f"{record_problem}; {reason}" if record_problem else reason
    collection.problems.append(Problem(directory, reason))
