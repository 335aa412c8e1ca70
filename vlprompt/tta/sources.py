"""Where a test image's initial prompt context comes from: hand-crafted words, or a learned checkpoint.

A :class:`ContextSource` does not depend on the class set: :meth:`ContextSource.learner` builds the
prompt learner for any list of class names from the (already loaded) CLIP, so moving to another dataset
never reloads CLIP. Checkpoints are recognised by their keys through the table of kinds in
:mod:`vlprompt.modeling.prompt_checkpoints`; each method declares its kind next to its own code (CoOp's
in ``trainers/coop.py``, CoCoOp's in ``trainers/cocoop.py``, GenPT's in ``trainers/genpt.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.errors import UserValueError
from vlprompt.modeling.backbones.base import adapter_for
from vlprompt.modeling.prompt_checkpoints import (  # noqa: F401 - the kinds table, also known by these names here
    CHECKPOINT_KINDS,
    CLASS_SET_BUFFERS,
    CheckpointKind,
    UnknownCheckpointError,
    build_from_checkpoint,
    checkpoint_signature,
    detect_checkpoint_kind,
    prompt_state,
    register_checkpoint_kind,
    resolve_checkpoint,
)
from vlprompt.modeling.prompts import PromptLearner


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
        width = adapter_for(clip_model).text_width
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
def context_from_checkpoint(path: str, tpt_cfg=None, epoch: int | None = None) -> ContextSource:
    """Load a checkpoint (file or model directory) safely, recognise its kind (declared by its method, see
    :mod:`vlprompt.modeling.prompt_checkpoints`) and build its context source."""
    return build_from_checkpoint(path, tpt_cfg, epoch)


def learned_context(state: dict, source: str, tpt_cfg) -> LearnedContext:
    """A :class:`LearnedContext` from a prompt state's ``ctx``, with TPT's class-token position (CoOp's kind)."""
    position = getattr(tpt_cfg, "CLASS_TOKEN_POSITION", "end") if tpt_cfg is not None else "end"
    return LearnedContext(state["ctx"], source, class_token_position=position)
