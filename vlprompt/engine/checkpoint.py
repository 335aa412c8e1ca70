"""Checkpoint I/O: Dassl-format files, atomic writes, and safe loading of foreign checkpoints.

Files are laid out exactly as Dassl 0.6.3 writes them (``model.pth.tar-<epoch>``, a ``checkpoint`` text
file naming the latest one, ``model-best.pth.tar``), so CoOp-era tools and scripts keep working. Two
things differ underneath:

* every write goes to a hidden temporary file in the same folder, is fsynced, then renamed over the
  final name (:func:`vlprompt.io.atomic_write`), so a killed or out-of-space run never leaves a
  truncated checkpoint behind;
* loading never runs code from the file (the safe readers live in :mod:`vlprompt.io`, the one loader
  for every file vlprompt opens). What we write is checked to load with ``torch.load(weights_only=True)``;
  checkpoints written by the original Dassl, which pickle live scheduler and optimiser objects, load
  through torch's restricted unpickler with those few classes mapped to inert placeholders (defined
  here). Anything else is refused unless ``VLPROMPT_TRUST_CHECKPOINTS=1``.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vlprompt.engine.runlock import pid_alive
from vlprompt.io import (
    TEMP_FILE_PATTERN,
    TRUST_ENV_VAR,
    CheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
    atomic_copy,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    load_torch_file,
    strip_module_prefix,
)

log = logging.getLogger(__name__)

__all__ = [
    "FINGERPRINT_KEY",
    "RESUME_FILE",
    "SETTINGS_KEY",
    "TRUST_ENV_VAR",
    "CheckpointError",
    "NotACheckpointError",
    "PickledObject",
    "PickledOptimizer",
    "PickledScheduler",
    "ResumePoint",
    "ResumeSearch",
    "UnsafeCheckpointError",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_weights_only_loadable",
    "find_resume_point",
    "load_checkpoint",
    "read_checkpoint_pointer",
    "remove_stale_temp_files",
    "resume_checkpoint_path",
    "save_checkpoint",
]

POINTER_FILE = "checkpoint"
# Extra top-level keys of the checkpoints we write (plain values; the original Dassl/CoOp code ignores
# unknown keys): what the run that wrote the file was, so a resume with other settings is refused.
FINGERPRINT_KEY = "run_fingerprint"
SETTINGS_KEY = "run_settings"
BEST_FILE = "model-best.pth.tar"
EPOCH_FILE_PREFIX = "model.pth.tar-"


# --------------------------------------------------------------------------- what weights_only can load
# Types torch.load(weights_only=True) rebuilds without any allow-listing (torch 2.6+).
_SCALAR_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray)
_TORCH_VALUE_TYPES = (torch.Size, torch.dtype, torch.device, torch.layout)
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _user_safe_types() -> tuple[type, ...]:
    """Classes the user allow-listed with ``torch.serialization.add_safe_globals``."""
    found = []
    for entry in getattr(torch.serialization, "get_safe_globals", list)():
        obj = entry[0] if isinstance(entry, tuple) else entry
        if isinstance(obj, type):
            found.append(obj)
    return tuple(found)


def _describe_type(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_weights_only_loadable(obj: Any, name: str = "state") -> None:
    """Raise TypeError, naming the key path, if ``torch.load(weights_only=True)`` could not read ``obj`` back.

    Catches the usual traps before anything is written: numpy scalars and arrays, live scheduler or
    optimiser objects, ``defaultdict`` and namedtuples, which pickle as globals the safe loader refuses.
    """
    user_types = _user_safe_types()
    seen: set[int] = set()

    def visit(value: Any, where: str) -> None:
        cls = type(value)
        if cls in _SCALAR_TYPES or cls in _TORCH_VALUE_TYPES or cls in _TENSOR_TYPES:
            return
        if user_types and isinstance(value, user_types):
            return
        if cls in (dict, OrderedDict, Counter, list, tuple, set):
            if id(value) in seen:  # shared or self-referencing containers are fine for pickle
                return
            seen.add(id(value))
            if cls in (list, tuple, set):
                for index, item in enumerate(value):
                    visit(item, f"{where}[{index}]")
            else:
                for key, item in value.items():
                    visit(key, f"{where} key {key!r}")
                    visit(item, f"{where}[{key!r}]")
            return
        hint = ""
        if hasattr(value, "state_dict"):
            hint = " Store its state_dict() instead."
        elif cls.__module__ == "numpy":
            hint = " Convert it with .item()/.tolist() or torch.from_numpy()."
        raise TypeError(
            f"{where} is a {_describe_type(value)}, which torch.load(weights_only=True) refuses to load; "
            "checkpoints may hold only tensors, numbers, strings, None and dict/list/tuple/set of them."
            f"{hint}"
        )

    visit(obj, name)


# ----------------------------------------------------------------------------------------------- saving
def save_checkpoint(
    state: dict,
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Save ``state`` as Dassl does (same names, pointer file and messages), atomically; returns the path.

    ``state`` holds ``state_dict``, ``epoch``, ``optimizer``, ``scheduler``, ``val_result`` and any extra
    keys; it is checked first so the file always loads with ``weights_only=True``. The caller's dict is
    not modified.
    """
    state = dict(state)
    if remove_module_from_keys:
        if "state_dict" not in state:
            raise KeyError(f"save_checkpoint: state has no 'state_dict' key (keys: {sorted(state)})")
        state["state_dict"] = strip_module_prefix(state["state_dict"])
    check_weights_only_loadable(state)

    if not model_name:
        if "epoch" not in state:
            raise KeyError(
                f"save_checkpoint: state has no 'epoch' key to name the file (keys: {sorted(state)})"
            )
        model_name = f"{EPOCH_FILE_PREFIX}{state['epoch']}"
    os.makedirs(save_dir, exist_ok=True)
    fpath = osp.join(save_dir, model_name)
    atomic_save(state, fpath)
    log.info(f"Checkpoint saved to {fpath}")

    # Written after the checkpoint, so it never points at a file that is not complete yet.
    atomic_write_text(osp.join(save_dir, POINTER_FILE), f"{osp.basename(fpath)}\n")

    if is_best:
        best_fpath = osp.join(osp.dirname(fpath), BEST_FILE)
        atomic_copy(fpath, best_fpath)
        log.info(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


# -------------------------------------------------------------------------------- Dassl's pickled objects
class PickledObject:
    """Inert stand-in for an object a Dassl checkpoint pickled: its attributes, none of its code.

    ``pickled_class`` is the original class path; the pickled attributes are set on the instance, so
    ``successor.last_epoch`` or ``successor.optimizer.param_groups`` read as they would on the original.
    """

    pickled_class = ""

    def __setstate__(self, state: Any) -> None:
        # Mirrors pickle's default BUILD: a dict of attributes, optionally with a dict of slot values.
        slots = None
        if isinstance(state, tuple) and len(state) == 2:
            state, slots = state
        if isinstance(state, dict):
            self.__dict__.update(state)
        elif state is not None:
            self.__dict__["pickled_state"] = state
        if isinstance(slots, dict):
            self.__dict__.update(slots)

    def __repr__(self) -> str:
        attributes = sorted(vars(self))
        return f"<{type(self).__name__}: stand-in for {self.pickled_class}; attributes {attributes}>"


class PickledScheduler(PickledObject):
    """Stand-in for a pickled learning-rate scheduler."""

    def state_dict(self) -> dict:
        """The scheduler's attributes without its optimiser, as ``LRScheduler.state_dict`` returns them."""
        return {key: value for key, value in vars(self).items() if key != "optimizer"}


class PickledOptimizer(PickledObject):
    """Stand-in for a pickled optimiser (``defaults``, ``state``, ``param_groups`` as attributes)."""


_DASSL_SCHEDULERS = (
    "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.optim.lr_scheduler.StepLR",
    "torch.optim.lr_scheduler.MultiStepLR",
    "torch.optim.lr_scheduler.ExponentialLR",
    "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
    "dassl.optim.lr_scheduler.LinearWarmupScheduler",
)
_DASSL_OPTIMIZERS = (
    "torch.optim.sgd.SGD",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.rmsprop.RMSprop",
    "torch.optim.radam.RAdam",
    "dassl.optim.radam.RAdam",
    "dassl.optim.radam.PlainRAdam",
    "dassl.optim.radam.AdamW",
)


def _plain_dict(default_factory: Any = None) -> dict:
    """Stand-in for ``collections.defaultdict`` (an optimiser's ``state``): a plain dict, factory dropped."""
    return {}


def _placeholder(base: type, path: str) -> type:
    name = "Pickled" + path.rsplit(".", 1)[1]
    return type(name, (base,), {"pickled_class": path, "__module__": __name__, "__qualname__": name})


# (object, name-in-the-pickle) pairs handed to torch's restricted unpickler. Each name maps to one of
# our classes, so the original constructors and __setstate__ never run; "builtins.dict" is only the
# defaultdict factory.
_DASSL_SAFE_GLOBALS: list[tuple[Callable, str]] = (
    [(_placeholder(PickledScheduler, path), path) for path in _DASSL_SCHEDULERS]
    + [(_placeholder(PickledOptimizer, path), path) for path in _DASSL_OPTIMIZERS]
    + [(_plain_dict, "collections.defaultdict"), (dict, "builtins.dict")]
)


# ---------------------------------------------------------------------------------------------- loading
def load_checkpoint(fpath: str, map_location: Any = "cpu") -> dict:
    """Load a checkpoint without running code from it; tensors go to ``map_location`` (CPU by default).

    Our files and plain state dicts load with ``weights_only=True``; files from the original Dassl load
    the same way with their pickled scheduler/optimiser objects turned into :class:`PickledObject`
    stand-ins. Other globals raise :class:`UnsafeCheckpointError` unless ``VLPROMPT_TRUST_CHECKPOINTS=1``
    (see :func:`vlprompt.io.load_torch_file`).
    """
    return load_torch_file(
        fpath, map_location, allowed_globals=_DASSL_SAFE_GLOBALS, example=f"{EPOCH_FILE_PREFIX}<epoch>"
    )


# --------------------------------------------------------------------------------------------- resuming
def read_checkpoint_pointer(directory: str) -> str | None:
    """The file name stored in ``directory/checkpoint`` (the latest save), or None if there is none."""
    pointer = osp.join(directory, POINTER_FILE)
    if not osp.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as handle:
        first_line = handle.readline().strip()
    return first_line or None


def _epoch_of(file_name: str) -> int | None:
    suffix = file_name[len(EPOCH_FILE_PREFIX) :]
    if file_name.startswith(EPOCH_FILE_PREFIX) and suffix.isdigit():
        return int(suffix)
    return None


def resume_checkpoint_path(directory: str) -> str | None:
    """Path of the checkpoint to resume from in ``directory``, or None when there is nothing to resume.

    The ``checkpoint`` pointer wins; if it is missing or names a file that is gone, the highest
    ``model.pth.tar-<epoch>`` is used (a run killed before its first pointer write still resumes).
    """
    if not osp.isdir(directory):
        return None
    pointed = read_checkpoint_pointer(directory)
    if pointed:
        path = osp.join(directory, pointed)
        if osp.isfile(path):
            return path
    epochs = {
        epoch: name
        for name in os.listdir(directory)
        if (epoch := _epoch_of(name)) is not None and osp.isfile(osp.join(directory, name))
    }
    if not epochs:
        return None
    return osp.join(directory, epochs[max(epochs)])


# A resume point is written after every epoch that does not produce a regular checkpoint, so a killed
# run loses at most the epoch in progress; the trainer removes it once training has finished.
RESUME_FILE = "resume.pth.tar"


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete the temporary files of writers that died mid-write (their process is gone) in
    ``directory``; a live process's files, mid-write, are left alone. Returns the removed paths."""
    removed = []
    if not osp.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        match = TEMP_FILE_PATTERN.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        path = osp.join(directory, name)
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, loaded (on the CPU), and why newer files were passed over."""

    path: str
    checkpoint: dict
    passed_over: list[str] = field(default_factory=list)


@dataclass
class ResumeSearch:
    """What :func:`find_resume_point` found in one model folder: the point to resume from (None when
    no complete checkpoint is there), pointer targets that do not exist, and files that are damaged."""

    point: ResumePoint | None
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


def _load_resumable(path: str) -> dict:
    """``path`` loaded, or :class:`NotACheckpointError` when it is damaged or is no training checkpoint."""
    checkpoint = load_checkpoint(path, map_location="cpu")
    if not isinstance(checkpoint, dict) or "epoch" not in checkpoint or "state_dict" not in checkpoint:
        raise NotACheckpointError(f'"{path}" has no "epoch" and "state_dict"; it is not a training checkpoint')
    return checkpoint


def find_resume_point(model_dir: str) -> ResumeSearch:
    """The newest complete checkpoint of one model folder, and why newer files were not used.

    Candidates are the file the ``checkpoint`` pointer names, the resume point and every
    ``model.pth.tar-<epoch>``; the one with the highest epoch that loads wins. A pointer naming a
    missing file, or a truncated or damaged newest file, falls back to the next complete one (the
    messages in ``missing``/``damaged`` say which, for a warning).
    """
    search = ResumeSearch(None)
    if not osp.isdir(model_dir):
        return search
    found: list[tuple[int, str, dict]] = []

    def attempt(path: str) -> bool:
        try:
            checkpoint = _load_resumable(path)
        except NotACheckpointError as err:
            search.damaged.append(str(err))
            return False
        found.append((int(checkpoint["epoch"]), path, checkpoint))
        return True

    tried: set[str] = set()
    pointed = read_checkpoint_pointer(model_dir)
    if pointed:
        path = osp.join(model_dir, pointed)
        tried.add(path)
        if osp.isfile(path):
            attempt(path)
        else:
            search.missing.append(f"{osp.join(model_dir, POINTER_FILE)} names {pointed}, which does not exist")
    resume = osp.join(model_dir, RESUME_FILE)
    if osp.isfile(resume) and resume not in tried:
        tried.add(resume)
        attempt(resume)
    newest = max((epoch for epoch, _, _ in found), default=-1)
    # Numbered files newer than what the pointer and resume point hold (a lost or stale pointer, or a
    # damaged newest file): newest first, stopping at the first that loads.
    numbered = sorted(
        ((epoch, osp.join(model_dir, name)) for name in os.listdir(model_dir)
         if (epoch := _epoch_of(name)) is not None and osp.isfile(osp.join(model_dir, name))),
        reverse=True,
    )
    for epoch, path in numbered:
        if epoch > newest and path not in tried:
            tried.add(path)
            if attempt(path):
                break
    if found:
        _, path, checkpoint = max(found, key=lambda item: item[0])
        search.point = ResumePoint(path, checkpoint, search.missing + search.damaged)
    return search
