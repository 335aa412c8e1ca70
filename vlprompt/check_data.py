"""The data checker: ``python -m vlprompt.check_data --root DATA [--dataset NAME ...]``.

For each dataset it reports OK with the number of classes and images per split, or exactly which file or
folder is missing, the layout that was expected and where DATASETS.md describes it; images that cannot
be read are listed. It reads the splits and checks the images as a run would (same code: split rows, labels,
the image check runs make before they start), but writes nothing.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

# (registered name, configs/datasets/<stem>.yaml) of the 15 benchmarks, in the order CoOp's papers list them.
BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("ImageNet", "imagenet"),
    ("Caltech101", "caltech101"),
    ("OxfordPets", "oxford_pets"),
    ("StanfordCars", "stanford_cars"),
    ("OxfordFlowers", "oxford_flowers"),
    ("Food101", "food101"),
    ("FGVCAircraft", "fgvc_aircraft"),
    ("SUN397", "sun397"),
    ("DescribableTextures", "dtd"),
    ("EuroSAT", "eurosat"),
    ("UCF101", "ucf101"),
    ("ImageNetV2", "imagenetv2"),
    ("ImageNetSketch", "imagenet_sketch"),
    ("ImageNetA", "imagenet_a"),
    ("ImageNetR", "imagenet_r"),
)
MAX_LISTED = 10  # missing or corrupt paths shown per dataset


@dataclass
class DatasetReport:
    """What the checker found for one dataset. ``status`` is OK, MISSING, CORRUPT or ERROR."""

    name: str
    status: str = "OK"
    dataset_dir: str = ""
    split_source: str = ""
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (classes, images)
    message: str = ""  # what is missing or wrong, with the expected layout and the docs section
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def resolve_name(name: str) -> str:
    """A registered dataset name from a registered name or a config stem, any case (``dtd`` →
    ``DescribableTextures``); unknown names raise a KeyError listing the valid ones."""
    import vlprompt.datasets  # noqa: F401 - registers the bundled datasets
    from vlprompt.compat import DATASET_REGISTRY

    if name in DATASET_REGISTRY:
        return name
    wanted = name.lower().removesuffix(".yaml")
    for registered, stem in BENCHMARKS:
        if wanted in (registered.lower(), stem):
            return registered
    for registered in DATASET_REGISTRY.registered_names():
        if registered.lower() == wanted:
            return registered
    raise KeyError(DATASET_REGISTRY.unknown_message(name))


def _config(name: str, root: str, layout: str, split_dir: str):
    from vlprompt.compat import get_cfg_default
    from vlprompt.engine.config import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.NAME, cfg.DATASET.ROOT = name, root
    cfg.DATASET.LAYOUT, cfg.DATASET.SPLIT_DIR = layout, split_dir
    cfg.DATASET.NUM_SHOTS = -1
    return cfg


def _load_splits(name: str, cfg, report: DatasetReport) -> dict[str, list]:
    """The dataset's splits, read without writing anything; missing images are collected, not raised."""
    from vlprompt.compat import DATASET_REGISTRY
    from vlprompt.datasets.base import LayoutDataset, SplitDataset
    from vlprompt.engine.logging import muted
    from vlprompt.splits import collect_missing_images

    cls = DATASET_REGISTRY.get(name)
    if not (isinstance(cls, type) and issubclass(cls, LayoutDataset)):
        dataset = cls(cfg)  # a plug-in dataset: build it as a run would
        report.dataset_dir = str(getattr(dataset, "dataset_dir", ""))
        return {"train": dataset.train_x or [], "val": dataset.val or [], "test": dataset.test or []}

    dataset = cls.__new__(cls)
    dataset.setup_paths(cfg)
    report.dataset_dir = dataset.dataset_dir
    if isinstance(dataset, SplitDataset):
        if dataset.split_name and osp.isfile(dataset.split_path):
            report.split_source = dataset.split_path
        elif dataset.split_name:
            report.split_source = f"built from {', '.join(dataset.raw_paths())} (no {dataset.split_file})"
        else:
            report.split_source = f"{', '.join(dataset.raw_files)} in {dataset.dataset_dir}"
    # The readers announce what they read ("Reading split from ..."); the report says it once, in order.
    with collect_missing_images() as missing, muted():
        splits = dataset.read_splits(save=False)
    if isinstance(dataset, SplitDataset) and dataset.split_name and not osp.isfile(dataset.split_path):
        report.notes.append(
            f"{dataset.split_file} not found: a run builds a split from the raw annotations (seeded) and saves "
            f'it to "{dataset.split_path}"; results are comparable to published ones only with CoOp\'s file '
            "(see DATASETS.md)"
        )
    if missing:
        report.missing = missing
        source = report.split_source or report.dataset_dir
        report.message = str(dataset.layout_error(f"{len(missing)} image(s) listed in {source} are missing"))
    return splits


def _find_unreadable(paths: Sequence[str], dataset_dir: str, workers: int) -> list[tuple[str, str]]:
    """(path, error) for every image that cannot be read, in the order given: the check a run makes before
    it starts (:func:`vlprompt.engine.data.find_unreadable_images`), reading the runs' cache, writing none."""
    from vlprompt.engine.data import find_unreadable_images, image_check_cache_path

    base = dataset_dir if osp.isabs(dataset_dir) and osp.isdir(dataset_dir) else ""
    cache_paths = [image_check_cache_path(base)] if base else []
    return list(find_unreadable_images(paths, cache_paths, base, workers=workers, write_cache=False).items())


def check_dataset(name: str, root: str, layout: str = "coop", split_dir: str = "", check_images: bool = True,
                  workers: int = 8) -> DatasetReport:
    """Check one dataset (registered name or config stem) under ``root``; never raises for data problems."""
    from vlprompt.datasets.base import DatasetLayoutError

    name = resolve_name(name)
    report = DatasetReport(name=name)
    try:
        splits = _load_splits(name, _config(name, root, layout, split_dir), report)
    except (DatasetLayoutError, FileNotFoundError) as err:
        report.status, report.message = "MISSING", str(err)
        return report
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        report.status = "ERROR"
        report.message = f"{name}: {type(err).__name__}: {err}\n  See DATASETS.md, section \"{name}\""
        return report

    for split, items in splits.items():
        report.counts[split] = (len({item.label for item in items}), len(items))
    if report.missing:
        report.status = "MISSING"
        return report
    if check_images:
        missing = set(report.missing)
        paths = list(dict.fromkeys(item.impath for items in splits.values() for item in items))
        report.corrupt = _find_unreadable([p for p in paths if p not in missing], report.dataset_dir, workers)
        if report.corrupt:
            report.status = "CORRUPT"
            report.message = (
                f"{name}: {len(report.corrupt)} image(s) cannot be read; replace them (re-extract the archive), or "
                "run with DATALOADER.SKIP_CORRUPT_IMAGES True to skip them"
            )
    return report


def format_report(report: DatasetReport) -> str:
    """The human-readable block for one dataset."""
    lines = [f"[{report.status}] {report.name}" + (f"  ({report.dataset_dir})" if report.dataset_dir else "")]
    if report.split_source:
        lines.append(f"    split: {report.split_source}")
    if report.counts:
        parts = [f"{split} {images:,} images / {classes:,} classes" for split, (classes, images) in report.counts.items()]
        if report.name == "ImageNet":
            parts.append("val = test")
        lines.append("    " + " | ".join(parts))
    if report.message:
        lines += ["    " + line for line in report.message.splitlines()]
    if report.missing:
        lines.append(f"    missing images ({len(report.missing)}):")
        lines += [f"      {path}" for path in report.missing[:MAX_LISTED]]
        if len(report.missing) > MAX_LISTED:
            lines.append(f"      ... and {len(report.missing) - MAX_LISTED} more")
    if report.corrupt:
        lines.append(f"    unreadable images ({len(report.corrupt)}):")
        lines += [f"      {path}  ({error})" for path, error in report.corrupt[:MAX_LISTED]]
        if len(report.corrupt) > MAX_LISTED:
            lines.append(f"      ... and {len(report.corrupt) - MAX_LISTED} more")
    lines += [f"    note: {note}" for note in report.notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.check_data",
        description="Check dataset layouts under DATASET.ROOT (see DATASETS.md). Exit status 0 when all are OK.",
    )
    parser.add_argument("--root", required=True, help="the folder holding the datasets (train.py's --root)")
    parser.add_argument("--dataset", nargs="+", default=None, metavar="NAME",
                        help="registered names or config stems (default: the 15 benchmarks)")
    parser.add_argument("--layout", choices=("coop", "tpt"), default="coop", help="folder names to expect (DATASET.LAYOUT)")
    parser.add_argument("--split-dir", default="", help="extra folder of split_zhou_*.json files (DATASET.SPLIT_DIR)")
    parser.add_argument("--no-images", action="store_true", help="skip checking every image (much faster)")
    parser.add_argument("--workers", type=int, default=8, help="threads checking images (default 8)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checker; returns the exit status (0 all OK, 1 a problem, 2 a bad argument)."""
    import vlprompt  # noqa: F401 - the torchvision shim, before anything imports torchvision

    args = build_parser().parse_args(argv)
    root = osp.abspath(osp.expanduser(args.root))
    try:
        names = [resolve_name(name) for name in args.dataset] if args.dataset else [n for n, _ in BENCHMARKS]
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    if not osp.isdir(root):
        print(f'error: --root "{root}" is not a folder', file=sys.stderr)
        return 2
    print(f"Checking {len(names)} dataset(s) under {root} ({args.layout} layout)")
    reports = []
    for name in names:
        report = check_dataset(name, root, layout=args.layout, split_dir=args.split_dir,
                               check_images=not args.no_images, workers=args.workers)
        reports.append(report)
        print(format_report(report), flush=True)
    tally = {}
    for report in reports:
        tally[report.status] = tally.get(report.status, 0) + 1
    print("Summary: " + ", ".join(f"{count} {status}" for status, count in sorted(tally.items())))
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
