"""Dassl-compatible data side: ``Datum``, ``DatasetBase``, few-shot sampling and its cache, transforms,
the dataset wrapper, loaders and ``DataManager``.

Behaviour follows Dassl 0.6.3 wherever it decides *which* images are used or *what* is printed (the
few-shot sampler consumes Python's ``random`` exactly as Dassl's, so one seed picks the same images).
It departs where Dassl is fragile: the few-shot cache is JSON with dataset-relative paths keyed by
what determines its content (no pickles of absolute paths), missing or corrupt images raise errors
naming the file, and an empty training split does not stop a test-only run. Nothing here knows CLIP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import os.path as osp
import random
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, ClassVar

import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler
from torch.utils.data import Dataset as TorchDataset

from vlprompt.engine import distributed
from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.engine.evaluation import announce_skipped
from vlprompt.engine.registry import DATASET_REGISTRY
from vlprompt.errors import UnsupportedSettingError, UserError, UserValueError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- Datum


class Datum:
    """One labelled image; the file must exist, so a wrong ``DATASET.ROOT`` fails when the split is read."""

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        if not isinstance(impath, str):
            raise TypeError(f"Datum impath must be a str, got {type(impath).__name__}: {impath!r}")
        if not osp.isfile(impath):
            folder = osp.dirname(impath) or "."
            where = "" if osp.isdir(folder) else " (that folder does not exist either: check DATASET.ROOT)"
            raise FileNotFoundError(f'Image file not found: "{impath}", expected in folder "{folder}"{where}')
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @classmethod
    def _trusted(cls, impath: str, label: int, domain: int, classname: str) -> Datum:
        """A Datum for a path already checked (relabelling), skipping a second stat per image."""
        item = cls.__new__(cls)
        item._impath, item._label, item._domain, item._classname = impath, label, domain, classname
        return item

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def _key(self) -> tuple:
        return (self._impath, self._label, self._domain, self._classname)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Datum) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, "
            f"classname={self._classname!r})"
        )


# -------------------------------------------------------------------------- sampling and subsampling


def split_dataset_by_label(data_source: Iterable) -> dict[int, list]:
    """Items grouped by label, labels in order of first appearance (the order the sampler walks)."""
    groups: dict[int, list] = defaultdict(list)
    for item in data_source:
        groups[item.label].append(item)
    return groups


def split_dataset_by_domain(data_source: Iterable) -> dict[int, list]:
    """Items grouped by domain, domains in order of first appearance."""
    groups: dict[int, list] = defaultdict(list)
    for item in data_source:
        groups[item.domain].append(item)
    return groups


def generate_fewshot_dataset(*data_sources: list, num_shots: int = -1, repeat: bool = False):
    """``num_shots`` items per label from each source, drawn with Python's ``random`` as Dassl draws them.

    Per label (first-appearance order): ``random.sample(items, K)`` when there are at least K items,
    otherwise all items, or ``random.choices(items, k=K)`` with ``repeat``. ``num_shots < 1`` returns
    the input unchanged. One source in → one list out; several → a list of lists.
    """
    if num_shots < 1:
        return data_sources[0] if len(data_sources) == 1 else data_sources

    log.info(f"Creating a {num_shots}-shot dataset")
    output = []
    for data_source in data_sources:
        sampled: list = []
        for items in split_dataset_by_label(data_source).values():
            if len(items) >= num_shots:
                sampled.extend(random.sample(items, num_shots))
            elif repeat:
                sampled.extend(random.choices(items, k=num_shots))
            else:
                sampled.extend(items)
        output.append(sampled)
    return output[0] if len(output) == 1 else output


SUBSAMPLE_CHOICES = ("all", "base", "new")


def subsample_classes(*args: list, subsample: str = "all"):
    """CoOp's base/new split: the first ``ceil(n/2)`` labels of the first split are base, the rest new.

    Labels are those present in ``args[0]`` (sorted); kept labels are renumbered from 0 in every split.
    ``"all"`` returns the inputs unchanged (as a tuple).
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise UserValueError(
            f'DATASET.SUBSAMPLE_CLASSES is "{subsample}"; it must be one of {", ".join(SUBSAMPLE_CHOICES)}'
        )
    if subsample == "all":
        return args

    labels = sorted({item.label for item in args[0]})
    num_base = math.ceil(len(labels) / 2)
    log.info(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:num_base] if subsample == "base" else labels[num_base:]
    relabel = {old: new for new, old in enumerate(selected)}

    output = []
    for data_source in args:
        # CoOp rebuilds each Datum without its domain, so the domain resets to 0; kept for parity.
        output.append(
            [
                Datum._trusted(item.impath, relabel[item.label], 0, item.classname)
                for item in data_source
                if item.label in relabel
            ]
        )
    return output


# ------------------------------------------------------------------------------------------- labels

MAX_NAMED = 10  # labels, classes or images named in one message


def _shown(values: Sequence, limit: int = MAX_NAMED) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_labels(splits: Mapping[str, Sequence], source: str) -> None:
    """Refuse labels that would silently shift class names, naming ``source`` (the split file or folder)
    and the row: each label an integer >= 0 naming one class everywhere; the first non-empty split's
    labels run 0..N-1 without gaps (it defines the classes, as in Dassl); no other split has a label it lacks.
    """
    named = [(name, items) for name, items in splits.items() if items]
    if not named:
        return
    first: dict[int, tuple[str, str, int]] = {}  # label -> (classname, split, row) where it was first seen
    for split, items in named:
        for row, item in enumerate(items):
            label = item.label
            if isinstance(label, bool) or not isinstance(label, int) or label < 0:
                raise UserValueError(
                    f'{source}: {split} row {row} ("{item.impath}") has label {label!r}; labels are integers '
                    "0..N-1 (one per class); fix that row"
                )
            classname, where, at = first.setdefault(label, (item.classname, split, row))
            if classname != item.classname:
                raise UserValueError(
                    f'{source}: label {label} is "{classname}" in {where} row {at} but "{item.classname}" in '
                    f"{split} row {row}; a label must name one class: fix the label or the class name of one row"
                )
    reference, items = named[0]
    labels = sorted({item.label for item in items})
    missing = sorted(set(range(labels[-1] + 1)) - set(labels))
    if missing:
        raise UserValueError(
            f"{source}: the {reference} split has labels up to {labels[-1]} but none of {_shown(missing)}; "
            f"with a gap there are {labels[-1] + 1} classes for {len(labels)} class names and every later label "
            f"points at the wrong name. Renumber the labels to 0..{len(labels) - 1} (or add the missing classes)"
        )
    known = set(labels)
    for split, items in named[1:]:
        for row, item in enumerate(items):
            if item.label not in known:
                raise UserValueError(
                    f'{source}: {split} row {row} ("{item.impath}") has label {item.label}, which the '
                    f"{reference} split (it defines the classes 0..{labels[-1]}) does not have; fix that row"
                )


def fewshot_shortfall(train: Sequence, num_shots: int) -> dict[str, int] | None:
    """``{classname: images}`` of ``train`` (label order) when a class has fewer than ``num_shots`` images,
    else None. CoOp then trains on all the images such a class has; this warns, naming those classes,
    so a run that asked for K shots does not pass for one that had them."""
    if num_shots < 1 or not train:
        return None
    counts = Counter(item.label for item in train)
    names = {item.label: item.classname for item in train}
    short = [f"{names[label]} ({counts[label]})" for label in sorted(counts) if counts[label] < num_shots]
    if not short:
        return None
    log.warning(
        f"DATASET.NUM_SHOTS is {num_shots} but {len(short)} class(es) have fewer training images, so all of "
        f"theirs are used: {_shown(short)}; run.json records the shots per class (shots_per_class)"
    )
    return {names[label]: counts[label] for label in sorted(counts)}


# ----------------------------------------------------------------------------------------- DatasetBase


class DatasetBase:
    """A dataset as Dassl sees it: labelled train, optional unlabelled train, val and test lists of Datum.

    ``num_classes`` is ``max(label) + 1`` and ``classnames`` are ordered by label, both from ``train_x``
    as in Dassl; for test-only use with an empty ``train_x`` they come from ``test`` (then ``val``).
    """

    dataset_dir = ""  # the dataset's folder under DATASET.ROOT
    domains: ClassVar[list[str]] = []  # names of all domains (domain-shift datasets only)

    def __init__(self, train_x=None, train_u=None, val=None, test=None) -> None:
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        labelled = next((split for split in (train_x, test, val) if split), None)
        if labelled is None:
            raise ValueError(
                f"{type(self).__name__}: train_x, val and test are all empty; nothing to build a dataset from"
            )
        self._num_classes = self.get_num_classes(labelled)
        self._lab2cname, self._classnames = self.get_lab2cname(labelled)
        # A gap would give num_classes prompts for fewer names and shift every later label's name; a label
        # of another split beyond them would crash mid-run. The full check names the row.
        others = [item.label for split in (train_x, test, val) if split and split is not labelled
                  for item in split]
        out_of_range = bool(others) and (min(others) < 0 or max(others) >= self._num_classes)
        if len(self._classnames) != self._num_classes or out_of_range:
            check_labels({"train_x": train_x or [], "test": test or [], "val": val or []}, type(self).__name__)

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    @property
    def classnames(self) -> list[str]:
        return self._classnames

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source: Iterable) -> int:
        """``max(label) + 1`` over the items (Dassl's count; gaps in the labels are counted)."""
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source: Iterable) -> tuple[dict[int, str], list[str]]:
        """Label → class name, and the class names ordered by label."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return {label: mapping[label] for label in labels}, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains: Sequence[str], target_domains: Sequence[str]) -> None:
        if not source_domains:
            raise UserValueError("DATASET.SOURCE_DOMAINS is empty; name at least one of " + str(self.domains))
        if not target_domains:
            raise UserValueError("DATASET.TARGET_DOMAINS is empty; name at least one of " + str(self.domains))
        self.is_input_domain_valid(source_domains)
        self.is_input_domain_valid(target_domains)

    def is_input_domain_valid(self, input_domains: Sequence[str]) -> None:
        for domain in input_domains:
            if domain not in self.domains:
                raise UserValueError(f"Input domain must belong to {self.domains}, but got [{domain}]")

    # Dassl exposes these as methods; CoOp calls subsample_classes as a static method of its datasets.
    split_dataset_by_label = staticmethod(split_dataset_by_label)
    split_dataset_by_domain = staticmethod(split_dataset_by_domain)
    subsample_classes = staticmethod(subsample_classes)

    def generate_fewshot_dataset(self, *data_sources: list, num_shots: int = -1, repeat: bool = False):
        """See :func:`generate_fewshot_dataset` (Dassl's method signature)."""
        return generate_fewshot_dataset(*data_sources, num_shots=num_shots, repeat=repeat)


# ------------------------------------------------------------------------------------- file helpers


def write_json_atomic(obj: Any, filepath: str, indent: int | None = 4) -> None:
    """Write JSON atomically (:func:`vlprompt.engine.checkpoint.atomic_write_text`), so readers never see
    half a file; the folder is created if missing. Format matches Dassl's ``write_json``."""
    atomic_write_text(filepath, json.dumps(obj, indent=indent, separators=(",", ": ") if indent else None))


def _dir_is_writable(folder: str) -> bool:
    """Whether files can be created in ``folder`` (made if missing); probed by writing, since
    ``os.access`` says yes to root on read-only mounts."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------- few-shot cache

CACHE_ENV = "VLPROMPT_CACHE"
FEWSHOT_FORMAT = "vlprompt-fewshot-v1"


def cache_root() -> str:
    """Folder for caches that cannot live beside the data: ``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt``."""
    return osp.abspath(osp.expanduser(os.environ.get(CACHE_ENV) or osp.join("~", ".cache", "vlprompt")))


def _relative(impath: str, dataset_dir: str) -> str:
    return osp.relpath(impath, dataset_dir).replace(os.sep, "/")


def _encode_items(items: Iterable, dataset_dir: str) -> list[list]:
    return [[_relative(item.impath, dataset_dir), int(item.label), item.classname, int(item.domain)] for item in items]


def split_fingerprint(dataset_dir: str, *splits: Iterable) -> str:
    """Short hash of the splits' ordered (relative path, label, classname, domain) rows: the few-shot
    draw depends on exactly these, so a changed split gets a new cache file instead of a stale one."""
    payload = json.dumps([_encode_items(split, dataset_dir) for split in splits], separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def fewshot_cache_paths(dataset_dir: str, name: str, num_shots: int, seed: int, fingerprint: str) -> list[str]:
    """Candidate cache files, preferred first: inside the dataset folder, then under :func:`cache_root`."""
    filename = f"shot_{num_shots}-seed_{seed}-{fingerprint}.json"
    return [
        osp.join(dataset_dir, "split_fewshot", filename),
        osp.join(cache_root(), name, "split_fewshot", filename),
    ]


def _save_cache(record: dict, candidates: Sequence[str], announce: str = "") -> str | None:
    """Write ``record`` atomically to the first candidate whose folder is writable; the path, or None.
    ``announce`` (with ``{path}``) is printed before the write."""
    for path in candidates:
        if not _dir_is_writable(osp.dirname(path)):
            continue
        try:
            if announce:
                log.info(announce.format(path=path))
            write_json_atomic(record, path, indent=None)
            return path
        except OSError as err:
            warnings.warn(f'Could not write cache "{path}": {err}', stacklevel=3)
    return None


def _read_fewshot_cache(path: str, dataset_dir: str, fingerprint: str) -> tuple[list, list] | None:
    """The cached (train, val), or None when the file is unreadable or belongs to other data."""
    try:
        with open(path) as handle:
            data = json.load(handle)
        if data.get("format") != FEWSHOT_FORMAT or data.get("split_hash") != fingerprint:
            return None
        splits = []
        for key in ("train", "val"):
            splits.append(
                None if data[key] is None else [
                    Datum(impath=osp.join(dataset_dir, rel), label=int(label), domain=int(domain), classname=cname)
                    for rel, label, cname, domain in data[key]
                ]
            )
        return splits[0], splits[1]
    except FileNotFoundError as err:
        # An image the cache names is gone: the split itself must have changed under the same hash.
        warnings.warn(f'Ignoring few-shot cache "{path}": {err}', stacklevel=3)
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f'Ignoring unreadable few-shot cache "{path}" ({type(err).__name__}: {err})', stacklevel=3)
        return None


def load_or_create_fewshot(
    dataset_dir: str,
    name: str,
    train: list,
    val: list | None,
    num_shots: int,
    seed: int,
    generate_fn: Callable[..., list] = generate_fewshot_dataset,
) -> tuple[list, list | None]:
    """Few-shot (train, val): ``num_shots`` per class from train and ``min(num_shots, 4)`` from val
    (``val=None``: only train is sampled and cached, as CoOp's ImageNet does).

    Cached as ``split_fewshot/shot_{K}-seed_{S}-<splithash>.json`` with paths relative to
    ``dataset_dir``: in the dataset folder when writable, else in ``$VLPROMPT_CACHE/<name>/split_fewshot``.
    A run that samples consumes ``random`` as CoOp's does; a run that loads the cache consumes nothing
    (as CoOp's pickle path). ``num_shots < 1`` returns the inputs unchanged.
    """
    if num_shots < 1:
        return train, val
    dataset_dir = osp.abspath(dataset_dir)
    fingerprint = split_fingerprint(dataset_dir, train, *(() if val is None else (val,)))
    candidates = fewshot_cache_paths(dataset_dir, name, num_shots, seed, fingerprint)

    for path in candidates:
        if osp.isfile(path):
            cached = _read_fewshot_cache(path, dataset_dir, fingerprint)
            if cached is not None:
                log.info(f"Loading preprocessed few-shot data from {path}")
                return cached

    train = generate_fn(train, num_shots=num_shots)
    if val is not None:
        val = generate_fn(val, num_shots=min(num_shots, 4))
    record = {
        "format": FEWSHOT_FORMAT,
        "num_shots": num_shots,
        "seed": seed,
        "split_hash": fingerprint,
        "train": _encode_items(train, dataset_dir),
        "val": None if val is None else _encode_items(val, dataset_dir),
    }
    if _save_cache(record, candidates, "Saving preprocessed few-shot data to {path}") is None:
        warnings.warn(
            f'No writable place for the few-shot cache (tried {", ".join(candidates)}); set {CACHE_ENV} '
            "to a writable folder to keep the selection between runs",
            stacklevel=2,
        )
    return train, val


# ------------------------------------------------------------------------------------ image check

IMAGE_CHECK_ENV = "VLPROMPT_IMAGE_CHECK"  # "0" turns off the check of every image before a run
IMAGE_CHECK_FORMAT = "vlprompt-image-check-v1"
_JPEG_END = b"\xff\xd9"


def image_check_enabled() -> bool:
    """Whether runs check their images before starting (``VLPROMPT_IMAGE_CHECK``, on unless 0/false/no/off)."""
    return os.environ.get(IMAGE_CHECK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _jpeg_ends_cleanly(path: str) -> bool:
    """A JPEG's last bytes (trailing padding aside) are its end-of-image marker; a cut-off download's are not."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64))
        return handle.read().rstrip(b"\x00\r\n\t ").endswith(_JPEG_END)


def _header_ok(path: str) -> bool:
    """PIL parses the header and ``verify()`` checks the file's structure (a PNG's chunks and CRCs) without
    decoding pixels; a JPEG must also end with its end-of-image marker."""
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        return fmt != "JPEG" or _jpeg_ends_cleanly(path)
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - any complaint is settled by a full decode
        return False


def probe_image(path: str) -> str | None:
    """None when the image at ``path`` can be read, else why not (the wording of :func:`read_image`'s errors).

    Fast: only a file whose header check (:func:`_header_ok`) fails is decoded in full, and only a failed
    decode makes it unreadable, so no readable image is refused.
    """
    try:
        if not _header_ok(path):
            read_image(path)
        return None
    except FileNotFoundError:
        return f'Image file not found: "{path}"'
    except OSError as err:
        return str(err)


def image_check_cache_path(dataset_dir: str, name: str = "") -> str:
    """Where the image check remembers a dataset's readable images: under :func:`cache_root`, one file per
    dataset folder (named by the folder and a hash of its absolute path), so the check never writes into
    the data, test-only sets included."""
    folder = osp.basename(osp.normpath(dataset_dir)) if dataset_dir else (name or "dataset")
    digest = hashlib.sha256(osp.abspath(dataset_dir).encode("utf-8") if dataset_dir else b"").hexdigest()[:12]
    return osp.join(cache_root(), folder, f"image_check-{digest}.json")


def _cache_key(path: str, base_dir: str) -> str:
    relative = osp.relpath(path, base_dir) if base_dir else path
    outside = relative == ".." or relative.startswith(".." + os.sep)
    return path if outside else relative.replace(os.sep, "/")


def _read_image_cache(paths: Sequence[str]) -> dict[str, list[int]]:
    entries: dict[str, list[int]] = {}
    for path in paths:
        try:
            with open(path) as handle:
                data = json.load(handle)
            if isinstance(data, dict) and data.get("format") == IMAGE_CHECK_FORMAT:
                entries.update(data["images"])
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning(f'Ignoring unreadable image-check cache "{path}" ({type(err).__name__}: {err})')
    return entries


def find_unreadable_images(paths: Sequence[str], cache_paths: Sequence[str] = (), base_dir: str = "",
                           workers: int = 8, write_cache: bool = True) -> dict[str, str]:
    """``{path: reason}`` for the images among ``paths`` that cannot be read (:func:`probe_image`), in order.

    Readable images are remembered by size and modification time in a JSON cache (read from every one of
    ``cache_paths``, written atomically to the first writable; paths relative to ``base_dir``), so an
    unchanged image costs one ``stat`` the next time; unreadable ones are never cached, so a fixed file
    is seen.
    """
    cached = _read_image_cache(cache_paths)

    def stat(path: str) -> list[int] | None:
        try:
            info = os.stat(path)
            return [info.st_size, info.st_mtime_ns]
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        stats = list(pool.map(stat, paths))
        keys = [_cache_key(path, base_dir) for path in paths]
        todo = [i for i, (key, info) in enumerate(zip(keys, stats)) if info is None or cached.get(key) != info]
        if len(todo) > 1000:  # the first run over a large dataset: say why it pauses
            log.info(f"Checking {len(todo):,} images not checked before (header only, remembered for later runs)")
        reasons = list(pool.map(probe_image, [paths[i] for i in todo]))
    bad = {paths[i]: reason for i, reason in zip(todo, reasons) if reason is not None}
    fresh = {keys[i]: stats[i] for i, reason in zip(todo, reasons) if reason is None and stats[i] is not None}
    if fresh and write_cache and cache_paths:
        record = {"format": IMAGE_CHECK_FORMAT, "images": {**cached, **fresh}}
        _save_cache(record, cache_paths)
    return bad


class UnreadableImagesError(UserError, OSError):
    """Images a run would read that cannot be read; the message names them and the fix."""


# ---------------------------------------------------------------------------------------- transforms

TRANSFORM_CHOICES = (
    "random_flip",
    "random_resized_crop",
    "normalize",
    "instance_norm",
    "random_crop",
    "random_translation",
    "center_crop",  # a default operation of the test transform; no effect in training (as Dassl 0.6.3)
    "cutout",
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
    "gaussian_noise",
    "colorjitter",
    "randomgrayscale",
    "gaussian_blur",
)
# Dassl names that this engine does not implement (AutoAugment/RandAugment policies).
UNSUPPORTED_TRANSFORMS = (
    "imagenet_policy",
    "cifar10_policy",
    "svhn_policy",
    "randaugment",
    "randaugment_fixmatch",
    "randaugment2",
)
INTERPOLATION_NAMES = ("bilinear", "bicubic", "nearest")


def interpolation_mode(name: str):
    """torchvision ``InterpolationMode`` for ``INPUT.INTERPOLATION``."""
    from torchvision.transforms import InterpolationMode

    modes = {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }
    if name not in modes:
        raise UserValueError(f'INPUT.INTERPOLATION is "{name}"; use one of {", ".join(INTERPOLATION_NAMES)}')
    return modes[name]


class Random2DTranslation:
    """With probability ``p``: enlarge by 1/8 and crop a random (height, width) window; else just resize.

    Draws from Python's ``random`` in Dassl's order (one draw for ``p``, then x, then y).
    """

    def __init__(self, height: int, width: int, p: float = 0.5, interpolation=None) -> None:
        from torchvision.transforms import InterpolationMode

        self.height, self.width, self.p = height, width, p
        self.interpolation = InterpolationMode.BILINEAR if interpolation is None else interpolation

    def __call__(self, img):
        from torchvision.transforms import functional as TF

        if random.uniform(0, 1) > self.p:
            return TF.resize(img, [self.height, self.width], interpolation=self.interpolation)
        big_w, big_h = round(self.width * 1.125), round(self.height * 1.125)
        enlarged = TF.resize(img, [big_h, big_w], interpolation=self.interpolation)
        left = round(random.uniform(0, big_w - self.width))
        top = round(random.uniform(0, big_h - self.height))
        return TF.crop(enlarged, top, left, self.height, self.width)


class InstanceNormalization:
    """Normalise a (C, H, W) tensor by its own per-channel mean and std."""

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        flat = img.reshape(img.shape[0], -1)
        mean = flat.mean(1).view(-1, 1, 1)
        std = flat.std(1).view(-1, 1, 1)
        return (img - mean) / (std + self.eps)


class Cutout:
    """Zero ``n_holes`` square patches of side ``length`` at NumPy-random centres (clipped at borders)."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        import numpy as np

        h, w = img.shape[1], img.shape[2]
        mask = np.ones((h, w), np.float32)
        half = self.length // 2
        for _ in range(self.n_holes):
            y, x = np.random.randint(h), np.random.randint(w)
            mask[np.clip(y - half, 0, h) : np.clip(y + half, 0, h), np.clip(x - half, 0, w) : np.clip(x + half, 0, w)] = 0
        return img * torch.from_numpy(mask).expand_as(img)


class GaussianNoise:
    """With probability ``p``, add N(mean, std²) noise to a tensor image."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if random.uniform(0, 1) > self.p:
            return img
        return img + torch.randn(img.size()) * self.std + self.mean


def _check_choices(choices: Sequence[str]) -> None:
    for choice in choices:
        if choice not in TRANSFORM_CHOICES:
            raise UserValueError(f'INPUT.TRANSFORMS has unknown "{choice}"; valid: {", ".join(TRANSFORM_CHOICES)}')
        if choice in UNSUPPORTED_TRANSFORMS:
            raise UnsupportedSettingError(
                f'INPUT.TRANSFORMS "{choice}" (an AutoAugment/RandAugment policy) is not implemented by the '
                "built-in engine; remove it or pass a custom transform to DataManager"
            )


def build_transform(cfg, is_train: bool = True, choices: Sequence[str] | None = None):
    """Dassl's train or test transform from ``cfg.INPUT`` (``choices`` overrides ``INPUT.TRANSFORMS``);
    None when ``INPUT.NO_TRANSFORM``. Prints the steps in Dassl's wording."""
    if cfg.INPUT.NO_TRANSFORM:
        log.info("Note: no transform is applied!")
        return None
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    _check_choices(choices)
    interp = interpolation_mode(cfg.INPUT.INTERPOLATION)
    size = tuple(cfg.INPUT.SIZE)
    target_size = f"{size[0]}x{size[1]}"
    if is_train:
        return _build_transform_train(cfg, choices, size, target_size, interp)
    return _build_transform_test(cfg, choices, size, target_size, interp)


def _normalize_steps(cfg, choices: Sequence[str]) -> list:
    from torchvision import transforms as T

    steps: list = []
    if "normalize" in choices:
        mean, std = list(cfg.INPUT.PIXEL_MEAN), list(cfg.INPUT.PIXEL_STD)
        log.info(f"+ normalization (mean={mean}, std={std})")
        steps.append(T.Normalize(mean=mean, std=std))
    return steps


def _build_transform_train(cfg, choices: Sequence[str], size: tuple, target_size: str, interp):
    from torchvision import transforms as T

    log.info("Building transform_train")
    steps: list = []
    # Without a random crop nothing else brings the image to the input size.
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        log.info(f"+ resize to {target_size}")
        steps.append(T.Resize(size, interpolation=interp))
    if "random_translation" in choices:
        log.info("+ random translation")
        steps.append(Random2DTranslation(size[0], size[1]))
    if "random_crop" in choices:
        padding = cfg.INPUT.CROP_PADDING
        log.info(f"+ random crop (padding = {padding})")
        steps.append(T.RandomCrop(size, padding=padding))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        log.info(f"+ random resized crop (size={size}, scale={scale})")
        steps.append(T.RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "random_flip" in choices:
        log.info("+ random flip")
        steps.append(T.RandomHorizontalFlip())
    if "colorjitter" in choices:
        b, c, s, h = (cfg.INPUT.COLORJITTER_B, cfg.INPUT.COLORJITTER_C, cfg.INPUT.COLORJITTER_S,
                      cfg.INPUT.COLORJITTER_H)
        log.info(f"+ color jitter (brightness={b}, contrast={c}, saturation={s}, hue={h})")
        steps.append(T.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h))
    if "randomgrayscale" in choices:
        log.info("+ random gray scale")
        steps.append(T.RandomGrayscale(p=cfg.INPUT.RGS_P))
    if "gaussian_blur" in choices:
        log.info(f"+ gaussian blur (kernel={cfg.INPUT.GB_K})")
        steps.append(T.RandomApply([T.GaussianBlur(cfg.INPUT.GB_K)], p=cfg.INPUT.GB_P))
    log.info("+ to torch tensor of range [0, 1]")
    steps.append(T.ToTensor())
    if "cutout" in choices:
        n_holes, length = cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN
        log.info(f"+ cutout (n_holes={n_holes}, length={length})")
        steps.append(Cutout(n_holes, length))
    steps += _normalize_steps(cfg, choices)
    if "gaussian_noise" in choices:
        log.info(f"+ gaussian noise (mean={cfg.INPUT.GN_MEAN}, std={cfg.INPUT.GN_STD})")
        steps.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        log.info("+ instance normalization")
        steps.append(InstanceNormalization())
    return T.Compose(steps)


def _build_transform_test(cfg, choices: Sequence[str], size: tuple, target_size: str, interp):
    from torchvision import transforms as T

    log.info("Building transform_test")
    log.info(f"+ resize the smaller edge to {max(size)}")
    steps: list = [T.Resize(max(size), interpolation=interp)]
    log.info(f"+ {target_size} center crop")
    steps.append(T.CenterCrop(size))
    log.info("+ to torch tensor of range [0, 1]")
    steps.append(T.ToTensor())
    steps += _normalize_steps(cfg, choices)
    if "instance_norm" in choices:
        log.info("+ instance normalization")
        steps.append(InstanceNormalization())
    return T.Compose(steps)


# ------------------------------------------------------------------------------- wrapper and loaders


class _WorkerSafeMessage:
    """Keeps the one-line message when a DataLoader worker raised the error.

    torch re-creates a worker's exception in the main process from a single string, "Caught <Type> in
    DataLoader worker process N.\nOriginal Traceback ...<Type>: <message>"; for these errors that string
    is cut back to the message and the worker, so a run stops with the path, not a worker's stack.
    """

    def __init__(self, *args) -> None:
        name = type(self).__name__
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith(f"Caught {name} "):
            text = args[0]
            where = text.split("\n", 1)[0][len(f"Caught {name} ") :].rstrip(".")
            marker = text.rfind(f"{name}: ")
            if marker >= 0:
                args = (f"{text[marker + len(name) + 2 :].strip()} ({where})",)
        super().__init__(*args)


class ImageReadError(_WorkerSafeMessage, UserError, OSError):
    """An image that exists but cannot be decoded; the message names the file."""


class ImageNotFoundError(_WorkerSafeMessage, UserError, FileNotFoundError):
    """An image listed by the dataset that is gone; the message names the file."""


def read_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB; any failure becomes an ``OSError`` (``ImageReadError`` or
    ``ImageNotFoundError``) that names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise ImageNotFoundError(f'Image file not found: "{path}"') from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f'Cannot read image "{path}": {type(err).__name__}: {err}') from err


def _cfg_get(node, key: str, default):
    """``node.key`` or ``default`` for keys newer than Dassl's defaults (configs built elsewhere)."""
    try:
        return getattr(node, key)
    except AttributeError:
        return default


class DatasetWrapper(TorchDataset):
    """Turns a list of Datum into Dassl's batch dicts: ``label``, ``domain``, ``impath``, ``index``,
    ``img`` (``img2``, ... for a list of transforms; a list of K views with ``K_TRANSFORMS`` > 1 in
    training) and ``img0`` (un-augmented tensor) with ``RETURN_IMG0``.

    An unreadable image raises an error naming its path. With ``DATALOADER.SKIP_CORRUPT_IMAGES`` it
    is skipped instead: the item comes out as None, which :func:`collate_skipping` leaves out of its
    batch (no other image takes its place); each skipped path is warned about once per process and
    flagged in shared memory, so ``num_skipped``/``skipped_paths`` count distinct images across
    DataLoader workers and epochs. ``num_preskipped`` counts the images of this split that the check
    before the run already left out (set by :class:`DataManager`).
    """

    def __init__(self, cfg, data_source: Sequence, transform=None, is_train: bool = False) -> None:
        from torchvision import transforms as T

        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform  # a callable, or a list/tuple of them
        self.is_train = is_train
        # Several augmented views per image only make sense in training.
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        self.skip_corrupt = bool(_cfg_get(cfg.DATALOADER, "SKIP_CORRUPT_IMAGES", False))
        self.num_preskipped = 0
        self._warned: set[str] = set()
        # One shared flag per item (inherited by fork, passed along by spawn) so workers' skips add up.
        self._skip_flags = multiprocessing.RawArray("b", len(data_source)) if self.skip_corrupt else None
        if self.k_tfm > 1 and transform is None:
            raise UserValueError(
                f"DATALOADER.K_TRANSFORMS is {self.k_tfm} but there is no transform to augment with "
                "(INPUT.NO_TRANSFORM is set?)"
            )
        to_tensor = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=interpolation_mode(cfg.INPUT.INTERPOLATION))]
        to_tensor.append(T.ToTensor())
        if "normalize" in cfg.INPUT.TRANSFORMS:
            to_tensor.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(to_tensor)

    def __len__(self) -> int:
        return len(self.data_source)

    @property
    def skipped_paths(self) -> list[str]:
        """Paths of the distinct images skipped so far, by any process (empty without skipping)."""
        if self._skip_flags is None:
            return []
        return [self.data_source[i].impath for i, flag in enumerate(self._skip_flags) if flag]

    @property
    def num_skipped(self) -> int:
        """How many distinct images were skipped as unreadable."""
        return 0 if self._skip_flags is None else sum(1 for flag in self._skip_flags if flag)

    def _load(self, idx: int) -> Image.Image | None:
        """The image of item ``idx``; None when it is unreadable and skipping is on (flagged, warned once)."""
        path = self.data_source[idx].impath
        try:
            return read_image(path)
        except OSError as err:
            if not self.skip_corrupt:
                raise
            self._skip_flags[idx] = 1
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"Skipping unreadable image (DATALOADER.SKIP_CORRUPT_IMAGES): {err}", stacklevel=2)
            return None

    def __getitem__(self, idx: int) -> dict[str, Any] | None:
        img0 = self._load(idx)
        if img0 is None:
            return None
        item = self.data_source[idx]
        output: dict[str, Any] = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": idx}
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._transform_image(tfm, img0)
        else:
            output["img"] = self._transform_image(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        return output

    def _transform_image(self, tfm, img0):
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views


def collate_skipping(batch: list) -> dict | None:
    """The default collation of the items that could be read (None items are skipped images); None when
    none could."""
    from torch.utils.data import default_collate

    kept = [item for item in batch if item is not None]
    return default_collate(kept) if kept else None


class SkippingDataLoader(DataLoader):
    """The loader under ``DATALOADER.SKIP_CORRUPT_IMAGES``: batches hold only readable images (a batch with
    none is not yielded), and a pass over an evaluation split tells the next result block how many of the
    split's images were skipped (see :func:`vlprompt.engine.evaluation.announce_skipped`)."""

    def __iter__(self):
        wrapper = self.dataset
        if not getattr(wrapper, "is_train", True):
            announce_skipped(lambda: wrapper.num_skipped + wrapper.num_preskipped)
        return self._readable(super().__iter__())

    @staticmethod
    def _readable(batches):
        for batch in batches:
            if batch is None:
                log.warning("A batch held only unreadable images and was left out (DATALOADER.SKIP_CORRUPT_IMAGES)")
                continue
            yield batch


SAMPLER_NAMES = ("RandomSampler", "SequentialSampler")
DASSL_ONLY_SAMPLERS = ("RandomDomainSampler", "SeqDomainSampler", "RandomClassSampler")


def build_sampler(sampler_type: str, data_source: Sequence):
    """The sampler named by ``DATALOADER.*.SAMPLER`` (the two CoOp-family methods use)."""
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type in DASSL_ONLY_SAMPLERS:
        raise UnsupportedSettingError(
            f'Sampler "{sampler_type}" (domain/class-balanced, from Dassl) is not implemented by the built-in '
            f"engine; use one of {', '.join(SAMPLER_NAMES)} or run with VLPROMPT_ENGINE=dassl"
        )
    raise UserValueError(f'Unknown sampler type "{sampler_type}"; use one of {", ".join(SAMPLER_NAMES)}')


def build_data_loader(
    cfg,
    sampler_type: str = "SequentialSampler",
    data_source: Sequence | None = None,
    batch_size: int = 64,
    n_domain: int = 0,
    n_ins: int = 2,
    tfm=None,
    is_train: bool = True,
    dataset_wrapper=None,
) -> DataLoader:
    """Dassl's loader: a full last batch is dropped in training only when the data fill one batch
    (so tiny few-shot sets still give one batch); pinned memory only with CUDA in use."""
    if not data_source:
        raise ValueError("build_data_loader got an empty data_source; check the dataset split and NUM_SHOTS")
    wrapper_cls = DatasetWrapper if dataset_wrapper is None else dataset_wrapper
    wrapper = wrapper_cls(cfg, data_source, transform=tfm, is_train=is_train)
    num_items = len(data_source)
    if is_train and distributed.is_distributed():
        sampler, batch_size, num_items = _distributed_sampler(cfg, sampler_type, wrapper, batch_size)
    else:
        sampler = build_sampler(sampler_type, data_source)
    skipping = bool(getattr(wrapper, "skip_corrupt", False))
    return (SkippingDataLoader if skipping else DataLoader)(
        wrapper,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        drop_last=is_train and num_items >= batch_size,
        pin_memory=torch.cuda.is_available() and bool(_cfg_get(cfg, "USE_CUDA", True)),
        **({"collate_fn": collate_skipping} if skipping else {}),
    )


def _distributed_sampler(cfg, sampler_type: str, wrapper, batch_size: int):
    """This rank's share of the training data: (sampler, per-rank batch size, items per rank).

    The configured batch size stays the global one, split evenly across ranks; the order is a
    permutation seeded by ``SEED`` and the epoch (``set_epoch``), the same on every rank.
    """
    world = distributed.world_size()
    if batch_size % world:
        raise UserValueError(
            f"DATALOADER.TRAIN_X.BATCH_SIZE {batch_size} is the global batch and must divide evenly across "
            f"{world} processes; use a multiple of {world}"
        )
    sampler = DistributedSampler(
        wrapper, num_replicas=world, rank=distributed.rank(), shuffle=sampler_type == "RandomSampler",
        seed=max(int(cfg.SEED), 0),
    )
    return sampler, batch_size // world, sampler.num_samples


def build_dataset(cfg, registry=DATASET_REGISTRY) -> DatasetBase:
    """The dataset registered as ``DATASET.NAME`` in ``registry``, built from ``cfg``."""
    if not cfg.DATASET.NAME:
        raise UserValueError("DATASET.NAME is empty; pass --dataset-config-file configs/datasets/<name>.yaml")
    # Importing the bundled datasets registers them; a plugin's own datasets register on import too.
    import vlprompt.datasets  # noqa: F401

    dataset_cls = registry.get(cfg.DATASET.NAME)
    if cfg.VERBOSE:
        log.info(f"Loading dataset: {cfg.DATASET.NAME}")
    return dataset_cls(cfg)


SPLIT_ATTRS = ("train_x", "train_u", "val", "test")  # a dataset's splits, as DatasetBase names them


def screen_images(cfg, dataset, splits: Sequence[str] = SPLIT_ATTRS) -> dict[str, list[str]]:
    """Check the images of ``dataset``'s ``splits`` before a run reads them. Unreadable ones raise one
    :class:`UnreadableImagesError` naming them; with ``DATALOADER.SKIP_CORRUPT_IMAGES`` they are removed
    from the splits instead (never replaced). Returns ``{split: removed paths}``."""
    lists = {name: getattr(dataset, name, None) or [] for name in splits}
    paths = list(dict.fromkeys(item.impath for items in lists.values() for item in items))
    if not paths:
        return {}
    dataset_dir = str(getattr(dataset, "dataset_dir", "") or "")
    if not (osp.isabs(dataset_dir) and osp.isdir(dataset_dir)):
        dataset_dir = ""  # a plug-in dataset without an absolute folder: its cache is keyed by its name
    bad = find_unreadable_images(paths, [image_check_cache_path(dataset_dir, cfg.DATASET.NAME)], dataset_dir,
                                 workers=min(8, os.cpu_count() or 1))
    if not bad:
        return {}
    in_splits = {name: [item.impath for item in items if item.impath in bad] for name, items in lists.items()}
    in_splits = {name: found for name, found in in_splits.items() if found}
    counts = ", ".join(f"{len(found)} in {name}" for name, found in in_splits.items())
    listed = "\n".join(f"  {reason}" for reason in list(bad.values())[:MAX_NAMED])
    more = f"\n  ... and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    if not _cfg_get(cfg.DATALOADER, "SKIP_CORRUPT_IMAGES", False):
        raise UnreadableImagesError(
            f"{len(bad)} image(s) of {cfg.DATASET.NAME or type(dataset).__name__} cannot be read ({counts}):\n"
            f"{listed}{more}\nReplace them (re-extract the archive), or pass DATALOADER.SKIP_CORRUPT_IMAGES True "
            "to leave them out; python -m vlprompt.check_data --root DATASET.ROOT lists them all"
        )
    log.warning(f"Leaving out {len(bad)} unreadable image(s) ({counts}; DATALOADER.SKIP_CORRUPT_IMAGES):\n"
                f"{listed}{more}")
    filtered: dict[int, list] = {}  # one filtered list per list object, so shared splits stay shared
    for name, items in lists.items():
        if items and hasattr(dataset, f"_{name}"):
            if id(items) not in filtered:
                filtered[id(items)] = [item for item in items if item.impath not in bad]
            setattr(dataset, f"_{name}", filtered[id(items)])
    if "train_x" in in_splits and hasattr(dataset, "shots_per_class"):  # a few-shot split lost images
        dataset.shots_per_class = fewshot_shortfall(dataset.train_x, cfg.DATASET.NUM_SHOTS)
    return in_splits


class DataManager:
    """Builds the dataset, transforms and loaders a trainer needs, and prints Dassl's summary table.

    ``train_loader_x`` is None when the dataset has no labelled training data (test-only use);
    ``train_loader_u`` only exists with ``train_u``; ``val_loader`` only with a non-empty ``val``.

    Before any loader is built, every image of ``check_splits`` (default: all) is checked
    (:func:`find_unreadable_images`): unreadable ones stop the run with one message naming them, or with
    ``DATALOADER.SKIP_CORRUPT_IMAGES`` are left out of their splits (``preskipped``).
    """

    dataset_registry = DATASET_REGISTRY  # where DATASET.NAME is looked up

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None,
                 check_splits: Sequence[str] = SPLIT_ATTRS) -> None:
        announce_skipped(None)
        dataset = build_dataset(cfg, self.dataset_registry)
        self.preskipped: dict[str, list[str]] = {}  # split -> images left out before the run (unreadable)
        if image_check_enabled():
            self.preskipped = screen_images(cfg, dataset, check_splits)

        if custom_tfm_train is None:
            tfm_train = build_transform(cfg, is_train=True)
        else:
            log.info("* Using custom transform for training")
            tfm_train = custom_tfm_train
        if custom_tfm_test is None:
            tfm_test = build_transform(cfg, is_train=False)
        else:
            log.info("* Using custom transform for testing")
            tfm_test = custom_tfm_test

        loaders = cfg.DATALOADER
        self.train_loader_x = None
        if dataset.train_x:
            self.train_loader_x = build_data_loader(
                cfg, sampler_type=loaders.TRAIN_X.SAMPLER, data_source=dataset.train_x,
                batch_size=loaders.TRAIN_X.BATCH_SIZE, n_domain=loaders.TRAIN_X.N_DOMAIN,
                n_ins=loaders.TRAIN_X.N_INS, tfm=tfm_train, is_train=True, dataset_wrapper=dataset_wrapper,
            )

        self.train_loader_u = None
        if dataset.train_u:
            node = loaders.TRAIN_X if loaders.TRAIN_U.SAME_AS_X else loaders.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=node.SAMPLER, data_source=dataset.train_u, batch_size=node.BATCH_SIZE,
                n_domain=node.N_DOMAIN, n_ins=node.N_INS, tfm=tfm_train, is_train=True,
                dataset_wrapper=dataset_wrapper,
            )

        self.val_loader = None
        if dataset.val:
            self.val_loader = build_data_loader(
                cfg, sampler_type=loaders.TEST.SAMPLER, data_source=dataset.val,
                batch_size=loaders.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
            )

        self.test_loader = None
        if dataset.test:
            self.test_loader = build_data_loader(
                cfg, sampler_type=loaders.TEST.SAMPLER, data_source=dataset.test,
                batch_size=loaders.TEST.BATCH_SIZE, tfm=tfm_test, is_train=False, dataset_wrapper=dataset_wrapper,
            )

        for split, loader in (("val", self.val_loader), ("test", self.test_loader)):
            if loader is not None and split in self.preskipped:
                loader.dataset.num_preskipped = len(self.preskipped[split])

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test

        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def num_source_domains(self) -> int:
        return self._num_source_domains

    @property
    def lab2cname(self) -> dict[int, str]:
        return self._lab2cname

    def summary_rows(self, cfg) -> list[list]:
        """The rows of Dassl 0.6.3's dataset table (optional rows only when present)."""
        dataset = self.dataset
        rows: list[list] = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            rows.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            rows.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        rows.append(["# classes", f"{self.num_classes:,}"])
        rows.append(["# train_x", f"{len(dataset.train_x or []):,}"])
        if dataset.train_u:
            rows.append(["# train_u", f"{len(dataset.train_u):,}"])
        if dataset.val:
            rows.append(["# val", f"{len(dataset.val):,}"])
        rows.append(["# test", f"{len(dataset.test or []):,}"])
        return rows

    def show_dataset_summary(self, cfg) -> None:
        log.info(tabulate(self.summary_rows(cfg)))

    def skipped_images(self) -> list[str]:
        """Distinct images skipped as unreadable (``DATALOADER.SKIP_CORRUPT_IMAGES``): those left out before
        the run, then those any loader skipped so far."""
        paths: dict[str, None] = {path: None for skipped in self.preskipped.values() for path in skipped}
        for loader in (self.train_loader_x, self.train_loader_u, self.val_loader, self.test_loader):
            wrapper = getattr(loader, "dataset", None)
            paths.update(dict.fromkeys(getattr(wrapper, "skipped_paths", [])))
        return list(paths)


def report_skipped_images(dm) -> int:
    """Print how many unreadable images a run skipped (and which), once at its end; returns the count."""
    paths = dm.skipped_images() if hasattr(dm, "skipped_images") else []
    if paths:
        shown = "\n".join(f"  {path}" for path in paths[:20])
        more = f"\n  ... and {len(paths) - 20} more" if len(paths) > 20 else ""
        log.info(f"Skipped {len(paths)} unreadable image(s) (DATALOADER.SKIP_CORRUPT_IMAGES True):\n{shown}{more}")
    return len(paths)
