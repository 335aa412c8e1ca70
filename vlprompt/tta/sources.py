"""Where a test image's initial prompt context comes from: hand-crafted words, or a learned checkpoint.

A :class:`ContextSource` does not depend on the class set: :meth:`ContextSource.learner` builds the
prompt learner for any list of class names from the (already loaded) CLIP, so moving to another dataset
never reloads CLIP. Checkpoints are recognised by their keys through a table of kinds
(:func:`register_checkpoint_kind`); ``coop`` (a context only) lives here, other methods register theirs
next to their trainer (CoCoOp's in ``trainers/tpt.py``).
"""

from __future__ import annotations

import hashlib
import os
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from vlprompt.prompts import PromptLearner

# Buffers that belong to the class set a checkpoint was trained on; never part of a kind's signature.
CLASS_SET_BUFFERS = ("token_prefix", "token_suffix")
PROMPT_LEARNER_DIR = "prompt_learner"


class UnknownCheckpointError(UserError, ValueError):
    """A checkpoint whose keys match no registered kind (CoOp, CoCoOp, ...)."""


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A short hash of tensor values, so a resumed run can tell it starts from the same context."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class ContextSource:
    """The initial context of every test image; ``shared`` when all images start from the same one."""

    kind: str = ""
    shared: bool = True

    def learner(self, classnames: Sequence[str], clip_model: nn.Module) -> PromptLearner:
        """A prompt learner for ``classnames`` whose ``ctx`` is the initial context."""
        raise NotImplementedError

    def initial_context(self, learner: PromptLearner, features: torch.Tensor) -> torch.Tensor:
        """Initial contexts ``(B, *ctx.shape)`` for images whose original views have the (unnormalised)
        image features ``features`` ``(B, E)``."""
        ctx = learner.ctx.detach()
        return ctx.unsqueeze(0).expand(features.shape[0], *ctx.shape)

    def describe(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identifies the initial state, recorded in the prediction log to refuse mixing two runs."""
        raise NotImplementedError


def build_learner(classnames: Sequence[str], clip_model: nn.Module, **kwargs) -> PromptLearner:
    """:class:`PromptLearner` without output and without moving the global RNG (its random init is
    overwritten by every caller here)."""
    with torch.random.fork_rng(devices=[]):
        return PromptLearner(classnames, clip_model, verbose=False, **kwargs)


class WordsContext(ContextSource):
    """Hand-crafted words (``"a photo of a"``); with no words, ``n_ctx`` random vectors (N(0, 0.02²))
    drawn from ``seed`` so a resumed run starts from the same ones."""

    kind = "words"

    def __init__(self, words: str, n_ctx: int = 4, seed: int = 0, class_token_position: str = "end") -> None:
        self.words = words.replace("_", " ").strip()
        self.n_ctx = n_ctx
        self.seed = seed
        self.class_token_position = class_token_position
        self._random: torch.Tensor | None = None

    def learner(self, classnames: Sequence[str], clip_model: nn.Module) -> PromptLearner:
        learner = build_learner(classnames, clip_model, n_ctx=self.n_ctx, ctx_init=self.words,
                                class_token_position=self.class_token_position)
        if not self.words:
            if self._random is None:
                generator = torch.Generator().manual_seed(self.seed)
                self._random = torch.randn(learner.ctx.shape, generator=generator) * 0.02
            with torch.no_grad():
                learner.ctx.copy_(self._random)
        return learner

    def describe(self) -> str:
        return f'words "{self.words}"' if self.words else f"{self.n_ctx} random context vectors (seed {self.seed})"

    def fingerprint(self) -> str:
        return f"words:{self.words}|{self.class_token_position}" if self.words else f"random:{self.n_ctx}:{self.seed}"


class LearnedContext(ContextSource):
    """A CoOp context ``(n_ctx, D)`` (shared) or ``(n_cls, n_ctx, D)`` (class-specific), any ``n_ctx``."""

    kind = "coop"

    def __init__(self, ctx: torch.Tensor, source: str, class_token_position: str = "end") -> None:
        if ctx.dim() not in (2, 3):
            raise UserValueError(f'"{source}": ctx has shape {tuple(ctx.shape)}; a CoOp context is (n_ctx, width) '
                             "or (n_cls, n_ctx, width)")
        self.ctx = ctx.detach().float().cpu()
        self.source = source
        self.class_token_position = class_token_position

    @property
    def csc(self) -> bool:
        return self.ctx.dim() == 3

    def learner(self, classnames: Sequence[str], clip_model: nn.Module) -> PromptLearner:
        width = clip_model.ln_final.weight.shape[0]
        if self.ctx.shape[-1] != width:
            raise UserValueError(
                f'"{self.source}": context width {self.ctx.shape[-1]} does not match the CLIP text width {width}; '
                "the checkpoint was trained with another backbone (set MODEL.BACKBONE.NAME to it)"
            )
        if self.csc and self.ctx.shape[0] != len(classnames):
            raise UserValueError(
                f'"{self.source}": a class-specific context for {self.ctx.shape[0]} classes cannot start TPT on a '
                f"dataset with {len(classnames)} classes"
            )
        learner = build_learner(classnames, clip_model, n_ctx=self.ctx.shape[-2], csc=self.csc,
                                class_token_position=self.class_token_position)
        with torch.no_grad():
            learner.ctx.copy_(self.ctx)
        return learner

    def describe(self) -> str:
        shape = "class-specific" if self.csc else "shared"
        return f'CoOp context from "{self.source}" ({shape}, {self.ctx.shape[-2]} tokens)'

    def fingerprint(self) -> str:
        return f"coop:{tensor_fingerprint(self.ctx)}|{self.class_token_position}"


# ------------------------------------------------------------------------------ kinds of checkpoints
@dataclass(frozen=True)
class CheckpointKind:
    """``matches(keys)`` says whether a state dict (class-set buffers removed) is this kind;
    ``build(state_dict, source, tpt_cfg)`` makes its :class:`ContextSource`."""

    name: str
    description: str
    matches: Callable[[set[str]], bool]
    build: Callable[[dict, str, object], ContextSource]


CHECKPOINT_KINDS: OrderedDict[str, CheckpointKind] = OrderedDict()


def register_checkpoint_kind(name: str, description: str, matches: Callable[[set[str]], bool],
                             build: Callable[[dict, str, object], ContextSource]) -> None:
    """Teach TPT to start from another method's checkpoint (e.g. GenPT's): its key signature and builder."""
    CHECKPOINT_KINDS[name] = CheckpointKind(name, description, matches, build)


def _coop_context(state: dict, source: str, tpt_cfg) -> ContextSource:
    position = getattr(tpt_cfg, "CLASS_TOKEN_POSITION", "end") if tpt_cfg is not None else "end"
    return LearnedContext(state["ctx"], source, class_token_position=position)


register_checkpoint_kind("coop", "ctx only", lambda keys: keys == {"ctx"}, _coop_context)


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
    cleaned = OrderedDict((k.removeprefix("module."), v) for k, v in state.items())
    for key in CLASS_SET_BUFFERS:
        cleaned.pop(key, None)
    return cleaned


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
    folder = osp.join(path, PROMPT_LEARNER_DIR) if osp.isdir(osp.join(path, PROMPT_LEARNER_DIR)) else path
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


def context_from_checkpoint(path: str, tpt_cfg=None, epoch: int | None = None) -> ContextSource:
    """Load a checkpoint (file or model directory) safely, recognise its kind and build its context source."""
    file = resolve_checkpoint(path, epoch)
    checkpoint = load_checkpoint(file)
    state = prompt_state(checkpoint, file)
    kind = detect_checkpoint_kind(state, file, frozenset(checkpoint_signature(checkpoint, state) - set(state)))
    return CHECKPOINT_KINDS[kind].build(state, file, tpt_cfg)
