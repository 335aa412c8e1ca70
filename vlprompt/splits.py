"""Split handling shared by every dataset file: CoOp's ``split_zhou_*.json`` format, the raw-data
splitters, and the few-shot + base/new step that follows reading a split.

The JSON is CoOp's: ``{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}``,
paths relative to a per-dataset prefix, ``indent=4``. The splitters consume Python's ``random`` as
CoOp's do (same calls, same order), so one seed gives CoOp's split; folders are listed sorted so the
result no longer depends on the file system's listing order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import os.path as osp
import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from vlprompt.engine.data import (
    Datum,
    check_labels,
    load_or_create_fewshot,
    subsample_classes,
    write_json_atomic,
)
from vlprompt.errors import UserFileNotFoundError, UserValueError

log = logging.getLogger(__name__)

SPLIT_KEYS = ("train", "val", "test")


def dataset_root(cfg) -> str:
    """``DATASET.ROOT`` as an absolute path (``~`` expanded)."""
    if not cfg.DATASET.ROOT:
        raise UserValueError("DATASET.ROOT is empty; pass --root /path/to/datasets (the folder holding each dataset)")
    root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
    if not osp.isdir(root):
        raise UserFileNotFoundError(
            f'DATASET.ROOT "{root}" does not exist; pass --root the folder that holds the datasets '
            "(see DATASETS.md; python -m vlprompt.check_data --root DIR checks a layout)"
        )
    return root


def listdir_nohidden(path: str, sort: bool = True) -> list[str]:
    """Entries of ``path`` not starting with a dot, sorted by default."""
    if not osp.isdir(path):
        raise UserFileNotFoundError(f'Folder not found: "{path}"')
    items = [name for name in os.listdir(path) if not name.startswith(".")]
    return sorted(items) if sort else items


_MISSING_IMAGES: ContextVar[list | None] = ContextVar("vlprompt_missing_images", default=None)


@contextmanager
def collect_missing_images() -> Iterator[list[str]]:
    """Within the block, :func:`make_datum` records missing images in the yielded list instead of failing
    on the first, so the data checker can name them all."""
    found: list[str] = []
    token = _MISSING_IMAGES.set(found)
    try:
        yield found
    finally:
        _MISSING_IMAGES.reset(token)


def make_datum(impath: str, label: int, classname: str, domain: int = 0) -> Datum:
    """A Datum for a listed image; a missing file raises, or is recorded under :func:`collect_missing_images`."""
    missing = _MISSING_IMAGES.get()
    if missing is not None and not osp.isfile(impath):
        missing.append(impath)
        return Datum._trusted(impath, label, domain, classname)
    return Datum(impath=impath, label=label, domain=domain, classname=classname)


def _relative_to(impath: str, path_prefix: str) -> str:
    return osp.relpath(impath, path_prefix).replace(os.sep, "/")


def _split_row(row, filepath: str, key: str, row_index: int, path_prefix: str) -> tuple[str, int, str]:
    """(image path, label, classname) of one split-file row, or one error naming the file, row and fix."""

    def bad(problem: str) -> UserValueError:
        return UserValueError(
            f'Split file "{filepath}", {key} row {row_index} is {row!r}: {problem}; fix or delete that row '
            f'(rows are [relpath, label, classname], relpath inside "{path_prefix}")'
        )

    if not isinstance(row, (list, tuple)) or len(row) < 3:
        raise bad("expected [relpath, label, classname]")
    relpath, label, classname = row[:3]
    if not isinstance(relpath, str) or not relpath.strip():
        raise bad("the path is not a non-empty string")
    if osp.isabs(relpath) or relpath.startswith(("/", "\\")) or osp.splitdrive(relpath)[0]:
        raise bad("the path is absolute; write it relative to the image folder")
    normalized = osp.normpath(relpath.replace("\\", "/"))
    if normalized == ".." or normalized.startswith(("../", ".." + os.sep)):
        raise bad("the path leads outside the image folder")
    if isinstance(label, float) and label.is_integer():
        label = int(label)  # JSON writers may print 3 as 3.0
    if isinstance(label, bool) or not isinstance(label, int):
        raise bad(f"the label {label!r} is not an integer")
    if label < 0:
        raise bad(f"the label {label} is negative; labels run 0..N-1")
    if not isinstance(classname, str) or not classname:
        raise bad("the class name is not a non-empty string")
    return osp.join(path_prefix, relpath), label, classname


def read_split(filepath: str, path_prefix: str) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """(train, val, test) from a CoOp split JSON; image paths are joined onto ``path_prefix``.

    Every row is checked before any work starts: a relative path inside ``path_prefix`` to an existing
    image, an integer label, a class name; then the labels together (:func:`check_labels`: no gaps, one
    name per label). A problem raises one error naming the file, the row and the fix.
    """
    log.info(f"Reading split from {filepath}")
    if not osp.isfile(filepath):
        raise UserFileNotFoundError(f'Split file not found: "{filepath}"')
    try:
        with open(filepath) as handle:
            split = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserValueError(f'Split file "{filepath}" is not valid JSON ({err}); delete it to rebuild it') from err
    if not isinstance(split, dict):
        raise UserValueError(f'Split file "{filepath}" holds a {type(split).__name__}, not CoOp\'s '
                             '{"train": [...], "val": [...], "test": [...]}; delete it to rebuild it')

    output = []
    for key in SPLIT_KEYS:
        if not isinstance(split.get(key), list):
            raise UserValueError(f'Split file "{filepath}" has no "{key}" list (keys: {sorted(split)})')
        items = []
        for row_index, row in enumerate(split[key]):
            impath, label, classname = _split_row(row, filepath, key, row_index, path_prefix)
            try:
                items.append(make_datum(impath, label, classname))
            except FileNotFoundError as err:
                raise UserFileNotFoundError(
                    f'{err}; listed in "{filepath}" ({key}, row {row_index}): restore the image, or fix or delete '
                    "that row"
                ) from err
        output.append(items)
    check_labels(dict(zip(SPLIT_KEYS, output)), f'Split file "{filepath}"')
    return output[0], output[1], output[2]


def save_split(train: Iterable, val: Iterable, test: Iterable, filepath: str, path_prefix: str) -> None:
    """Write a CoOp split JSON atomically, paths relative to ``path_prefix``."""

    def rows(items: Iterable) -> list[list]:
        return [[_relative_to(item.impath, path_prefix), item.label, item.classname] for item in items]

    write_json_atomic({"train": rows(train), "val": rows(val), "test": rows(test)}, filepath)
    log.info(f"Saved split to {filepath}")


def try_save_split(train: Iterable, val: Iterable, test: Iterable, filepath: str, path_prefix: str) -> bool:
    """:func:`save_split`, but a read-only dataset folder only prints a note (the split is rebuilt,
    identically for a fixed seed, on the next run)."""
    try:
        save_split(train, val, test, filepath, path_prefix)
        return True
    except OSError as err:
        log.info(f"Note: could not save split to {filepath} ({err}); it will be rebuilt next run")
        return False


def split_trainval(trainval: Sequence[Datum], p_val: float = 0.2) -> tuple[list[Datum], list[Datum]]:
    """Per label (first-appearance order): shuffle, the first ``round(n * p_val)`` go to val."""
    p_trn = 1 - p_val
    log.info(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    by_label: dict[int, list[int]] = defaultdict(list)
    for index, item in enumerate(trainval):
        by_label[item.label].append(index)

    train, val = [], []
    for label, indices in by_label.items():
        n_val = round(len(indices) * p_val)
        if n_val <= 0:
            classname = trainval[indices[0]].classname
            raise UserValueError(
                f'Class {label} ("{classname}") has {len(indices)} trainval images, too few for a '
                f"{p_val:.0%} validation share; it needs at least {math.ceil(0.5 / p_val)}"
            )
        random.shuffle(indices)
        for position, index in enumerate(indices):
            (val if position < n_val else train).append(trainval[index])
    return train, val


def read_and_split_data(
    image_dir: str,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: Sequence[str] = (),
    new_cnames: dict[str, str] | None = None,
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Split an ``image_dir/<class>/<image>`` tree per class into train/val/test shares.

    Classes are the sorted sub-folders (minus ``ignored``), labelled by that order; per class the
    sorted images are shuffled and cut at ``round(n * p_trn)`` and ``round(n * p_val)``.
    ``new_cnames`` renames folders to class names. Stray files beside the class folders are skipped.
    """
    categories = [name for name in listdir_nohidden(image_dir)
                  if name not in ignored and osp.isdir(osp.join(image_dir, name))]
    p_tst = 1 - p_trn - p_val
    log.info(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")

    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = [osp.join(category_dir, name) for name in listdir_nohidden(category_dir)
                  if osp.isfile(osp.join(category_dir, name))]
        random.shuffle(images)
        n_total = len(images)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        if n_train <= 0 or n_val <= 0 or n_total - n_train - n_val <= 0:
            raise UserValueError(
                f'Class folder "{category_dir}" has {n_total} images, too few for a {p_trn:.0%}/{p_val:.0%}/'
                f"{p_tst:.0%} split (each share must get at least one image)"
            )
        classname = new_cnames[category] if new_cnames is not None and category in new_cnames else category

        for share, paths in ((train, images[:n_train]), (val, images[n_train : n_train + n_val]),
                             (test, images[n_train + n_val :])):
            share.extend(make_datum(path, label, classname) for path in paths)
    return train, val, test


def fewshot_and_subsample(cfg, dataset_dir: str, train: list, val: list, test: list) -> tuple[list, list, list]:
    """The steps every few-shot dataset runs after reading its split: ``DATASET.NUM_SHOTS`` per class
    (cached, see :func:`vlprompt.engine.data.load_or_create_fewshot`), then ``DATASET.SUBSAMPLE_CLASSES``."""
    num_shots = cfg.DATASET.NUM_SHOTS
    if num_shots >= 1:
        train, val = load_or_create_fewshot(
            dataset_dir, osp.basename(osp.normpath(dataset_dir)), train, val, num_shots, cfg.SEED
        )
    subsample = getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")
    train, val, test = subsample_classes(train, val, test, subsample=subsample)
    return train, val, test
