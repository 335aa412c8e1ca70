"""Prompt checkpoints: loading a CoOp-format prompt state into a learner (with messages that name the
config value behind a mismatch), and the table of checkpoint *kinds* (CoOp, CoCoOp, GenPT, ...) that lets
a consumer such as TPT recognise any method's checkpoint by its keys.

Each method declares its kind next to its own code (:func:`register_checkpoint_kind`); nothing here or in
a consumer lists them.
"""

from __future__ import annotations

import os
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlprompt.engine.checkpoint import (
    BEST_FILE,
    EPOCH_FILE_PREFIX,
    FINGERPRINT_KEY,
    SETTINGS_KEY,
    load_checkpoint,
    read_checkpoint_pointer,
)
from vlprompt.errors import UserError, UserFileNotFoundError, UserValueError
from vlprompt.io import strip_module_prefix

# Buffers that CoOp-family checkpoints carry but that belong to the class set they were trained on:
# always recomputed from the current dataset's class names, never loaded, never part of a kind's signature.
CLASS_SET_BUFFERS = ("token_prefix", "token_suffix")
PROMPT_LEARNER = "prompt_learner"  # the registered model name, and the checkpoint folder, of every prompt method


class CheckpointMismatchError(UserError, ValueError):
    """A prompt checkpoint does not fit the model built from the current config."""


class UnknownCheckpointError(UserError, ValueError):
    """A checkpoint whose keys match no registered kind (CoOp, CoCoOp, ...)."""


# ------------------------------------------------------------------------------------------- loading
def describe_mismatch(key: str, saved: tuple, expected: tuple, learner: nn.Module) -> str:
    """Which config value explains a shape difference of ``key`` (N_CTX, CSC, width, classes)."""
    if key.startswith("meta_net."):
        # CoCoOp's meta-net maps the image feature (CLIP's embedding size) to a context-width vector.
        return (f"{key}: checkpoint {saved} vs model {expected}; the image feature size or context width "
                "differs: a checkpoint of another CLIP backbone")
    if key != "ctx":
        return f"{key}: checkpoint {saved} vs model {expected}"
    csc = getattr(learner, "csc", False)
    reasons = []
    if len(saved) != len(expected):
        reasons.append(
            f"CSC differs (checkpoint {'class-specific' if len(saved) == 3 else 'shared'} context, "
            f"config CSC={csc})"
        )
    else:
        if saved[-2] != expected[-2]:
            reasons.append(f"N_CTX differs (checkpoint {saved[-2]}, config {expected[-2]})")
        if saved[-1] != expected[-1]:
            reasons.append(
                f"context width differs (checkpoint {saved[-1]}, model {expected[-1]}): another CLIP backbone"
            )
        if len(saved) == 3 and saved[0] != expected[0]:
            reasons.append(
                f"number of classes differs (checkpoint {saved[0]}, dataset {expected[0]}): a class-specific "
                "context cannot move to another class set"
            )
    return f"ctx: checkpoint shape {saved} vs model {expected}; " + "; ".join(reasons)


def without_class_set(state_dict: dict) -> OrderedDict:
    """A prompt state with ``module.`` prefixes and the class-set buffers removed."""
    state = strip_module_prefix(state_dict)
    for key in CLASS_SET_BUFFERS:
        state.pop(key, None)
    return state


def load_prompt_state(module: nn.Module, state_dict: dict, source: str) -> None:
    """Load a CoOp-format prompt state into ``module``: class-set buffers dropped, shapes checked with a
    message naming the differing config value, missing trainable keys reported."""
    state = without_class_set(state_dict)
    own = module.state_dict()
    problems = [
        describe_mismatch(key, tuple(value.shape), tuple(own[key].shape), module)
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    trainable = {name for name, p in module.named_parameters()}
    missing = sorted(trainable - set(state))
    if missing:
        problems.append(f"missing keys {missing} (a checkpoint of another method?)")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        problems.append(f"unexpected keys {unexpected} (a checkpoint of another method?)")
    if problems:
        raise CheckpointMismatchError(f'Checkpoint "{source}" does not fit this model: ' + " | ".join(problems))
    module.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class CheckpointKind:
    """``matches(keys)`` says whether a state dict (class-set buffers removed) is this kind;
    ``build(state_dict, source, cfg)`` makes what a consumer starts from (TPT: a context source)."""

    name: str
    description: str
    matches: Callable[[set[str]], bool]
    build: Callable[[dict, str, Any], Any]


CHECKPOINT_KINDS: OrderedDict[str, CheckpointKind] = OrderedDict()


def register_checkpoint_kind(name: str, description: str, matches: Callable[[set[str]], bool],
                             build: Callable[[dict, str, Any], Any]) -> None:
    """Declare a method's checkpoint kind (next to the method): its key signature and builder."""
    CHECKPOINT_KINDS[name] = CheckpointKind(name, description, matches, build)


def prompt_state(checkpoint: dict, source: str) -> OrderedDict:
    """The state dict inside a Dassl checkpoint (or a bare state dict), ``module.`` prefixes and the
    class-set buffers removed."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise UnknownCheckpointError(
            f'"{source}" holds no state dict of tensors (top-level keys: {found}); TPT starts from a CoOp or '
            "CoCoOp checkpoint such as <output_dir>/prompt_learner/model.pth.tar-<epoch>"
        )
    return without_class_set(state)


# Top-level entries every Dassl-format checkpoint has; any other entry (e.g. GenPT's ``genpt``) is part
# of a kind's signature as ``checkpoint:<name>``.
STANDARD_CHECKPOINT_KEYS = frozenset({"state_dict", "epoch", "optimizer", "scheduler", "val_result", "rng_state",
                                      FINGERPRINT_KEY, SETTINGS_KEY})


def checkpoint_signature(checkpoint: dict, state: dict) -> set[str]:
    """The keys a kind is recognised by: the state dict's, plus ``checkpoint:<name>`` for extra entries."""
    extras = set(checkpoint) - STANDARD_CHECKPOINT_KEYS if "state_dict" in checkpoint else set()
    return set(state) | {f"checkpoint:{name}" for name in extras}


def detect_checkpoint_kind(state: dict, source: str, extra_keys: frozenset[str] = frozenset()) -> str:
    """The registered kind whose signature the keys of ``state`` (plus ``extra_keys``) match; a clear
    error otherwise."""
    keys = set(state) | set(extra_keys)
    for kind in CHECKPOINT_KINDS.values():
        if kind.matches(keys):
            return kind.name
    known = "; ".join(f"{k.name} ({k.description})" for k in CHECKPOINT_KINDS.values())
    raise UnknownCheckpointError(
        f'"{source}" is not a checkpoint TPT can start from: its keys are {sorted(keys)} '
        f"(token_prefix/token_suffix ignored), which match no known kind: {known}"
    )


def resolve_checkpoint(path: str, epoch: int | None = None) -> str:
    """A checkpoint file from ``path``: a file as is; a run folder or its ``prompt_learner/`` folder gives
    ``model.pth.tar-<epoch>``, or without an epoch ``model-best.pth.tar``, the ``checkpoint`` pointer's file,
    or the highest epoch, in that order."""
    path = osp.expanduser(path)
    if osp.isfile(path):
        if epoch is not None:
            raise UserValueError(f'"{path}" is a file; --load-epoch only applies to a model directory')
        return path
    if not osp.isdir(path):
        raise UserFileNotFoundError(f'TPT checkpoint "{path}" does not exist (give a checkpoint file or a model directory)')
    folder = osp.join(path, PROMPT_LEARNER) if osp.isdir(osp.join(path, PROMPT_LEARNER)) else path
    if epoch is not None:
        candidate = osp.join(folder, f"{EPOCH_FILE_PREFIX}{epoch}")
        if not osp.isfile(candidate):
            raise UserFileNotFoundError(f'Model not found at "{candidate}"')
        return candidate
    if osp.isfile(osp.join(folder, BEST_FILE)):
        return osp.join(folder, BEST_FILE)
    pointed = read_checkpoint_pointer(folder)
    if pointed and osp.isfile(osp.join(folder, pointed)):
        return osp.join(folder, pointed)
    epochs = [int(m.group(1)) for name in os.listdir(folder) if (m := re.fullmatch(r"model\.pth\.tar-(\d+)", name))]
    if epochs:
        return osp.join(folder, f"{EPOCH_FILE_PREFIX}{max(epochs)}")
    raise UserFileNotFoundError(f'No checkpoint in "{folder}" (looked for {BEST_FILE}, the checkpoint pointer and '
                            f"{EPOCH_FILE_PREFIX}<epoch>)")


def build_from_checkpoint(path: str, cfg: Any = None, epoch: int | None = None) -> Any:
    """Load a checkpoint (file or model directory) safely, recognise its kind and build from it."""
    file = resolve_checkpoint(path, epoch)
    checkpoint = load_checkpoint(file)
    state = prompt_state(checkpoint, file)
    kind = detect_checkpoint_kind(state, file, frozenset(checkpoint_signature(checkpoint, state) - set(state)))
    return CHECKPOINT_KINDS[kind].build(state, file, cfg)
