"""What every backbone family provides, and the table of families.

A *family* (OpenAI's ``clip``, ``open_clip``) knows how to turn a ``MODEL.BACKBONE.NAME`` into a weights
file and a model. Its *adapter* exposes what prompt learning needs from that model, in one vocabulary:
the tokenizer, the token and positional embeddings, running the text blocks under a causal mask, the final
norm and projection, where the end-of-text token is, the image encoder, the logit scale (and bias), and the
preprocessing the image tower was trained with. Nothing outside ``modeling/backbones/`` reads a family's
module internals; adding a family is one module here that calls :func:`register_family`.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from vlprompt.io import strip_module_prefix

__all__ = [
    "BUNDLED_FAMILIES", "FAMILIES", "BackboneFamily", "BlockParts", "ClipAdapter", "EotRule", "Preprocess",
    "Tokenizer", "WeightsInfo", "adapter_for", "family_for_name", "loaded_weights", "register_family",
]

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """How images must be prepared for a model's image tower (owned by the backbone, as timm and open_clip
    do): side length, per-channel mean and std, and the resize interpolation."""

    size: int
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    interpolation: str = "bicubic"


class Tokenizer:
    """A family's text tokenizer: ``tokenizer(texts)`` gives token ids ``(n, context_length)`` (int64);
    ``encode(text)`` the ids of the words alone (no start/end tokens); ``token_text(i)`` a token's text;
    ``sot_id`` the start-of-text id."""

    context_length: int = 77
    sot_id: int = 0

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        raise NotImplementedError


class BlockParts(NamedTuple):
    """One pre-norm residual attention block, in pieces: ``x + ls_1(attn(ln_1(x)))`` then
    ``x + ls_2(mlp(ln_2(x)))`` (``ls_*`` None when the family has no layer scale)."""

    ln_1: nn.Module
    attn: nn.MultiheadAttention
    ln_2: nn.Module
    mlp: nn.Module
    ls_1: nn.Module | None = None
    ls_2: nn.Module | None = None


@dataclass(frozen=True)
class EotRule:
    """Where a prompt's feature is read: the largest token id (CLIP's end-of-text has the largest id), or
    the first ``eos_id`` token. Plain data, so modules can keep it without holding the model."""

    eos_id: int | None = None

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.eos_id is None:
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)


class ClipAdapter:
    """What prompt learning needs from one CLIP-like model. The attribute names (``token_embedding``,
    ``positional_embedding``, ``transformer``, ``ln_final``, ``text_projection``) are those of the model's text
    tower, which both families share; what differs (attention layout, pooling, layer scale, tokenizer,
    image tower details) is a method here."""

    family: str = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # ---------------------------------------------------------------------------------------- text tower
    @property
    def text(self) -> nn.Module:
        """The module holding the text tower's parts (the model itself for CLIP-shaped models)."""
        return self.model

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text.token_embedding

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self.text.positional_embedding

    @property
    def transformer(self) -> nn.Module:
        return self.text.transformer

    @property
    def ln_final(self) -> nn.Module:
        return self.text.ln_final

    @property
    def text_projection(self) -> torch.Tensor | nn.Module:
        return self.text.text_projection

    @property
    def dtype(self) -> torch.dtype:
        """The dtype prompt vectors are made in (that of the image tower's weights, as CLIP's ``dtype``)."""
        raise NotImplementedError

    @property
    def text_width(self) -> int:
        """Width of the text transformer: the size of a token embedding, i.e. of a context vector."""
        return int(self.ln_final.weight.shape[0])

    @property
    def embed_dim(self) -> int:
        """Size of the joint image-text embedding."""
        projection = self.text_projection
        return int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def tokenizer(self) -> Tokenizer:
        raise NotImplementedError

    def eot_rule(self) -> EotRule:
        """How the end-of-text position (where each prompt's feature is read) is found."""
        return EotRule()

    def eot_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        """The end-of-text position of each prompt in ``tokens`` ``(..., L)``."""
        return self.eot_rule()(tokens)

    def batch_first(self) -> bool:
        """Whether the text blocks' attention takes ``(N, T, D)`` (else sequence-first ``(T, N, D)``)."""
        return False

    def text_blocks(self) -> list[BlockParts]:
        """The text transformer's blocks in pieces (for running them on a truncated or shared sequence)."""
        return [BlockParts(b.ln_1, b.attn, b.ln_2, b.mlp, getattr(b, "ls_1", None), getattr(b, "ls_2", None))
                for b in self.transformer.resblocks]

    def half(self) -> None:
        """Put the weights in the half precision the family ships (a no-op where they already are)."""
        raise NotImplementedError

    # --------------------------------------------------------------------------------------- image tower
    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    @property
    def image_output_dim(self) -> int:
        return int(self.visual.output_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``(B, E)``."""
        return self.visual(images.type(self.dtype))

    @property
    def preprocess(self) -> Preprocess:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- scoring
    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, in log space (scores use its exp)."""
        return self.model.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """An additive logit bias (SigLIP-style models), or None."""
        return getattr(self.model, "logit_bias", None)


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model was built from: ``file`` (absolute path, or the bundled name), its
    ``sha256``, and the ``architecture`` its tensors have (an OpenAI name or a description)."""

    file: str
    sha256: str
    architecture: str

    def as_record(self) -> dict[str, str]:
        """The ``"weights"`` object of ``run.json``."""
        return asdict(self)


class BackboneFamily:
    """One family of CLIP-like models: which backbone names it takes, where their weights are, how a
    model is built from them (without running code from the file), and its :class:`ClipAdapter`."""

    name: str = ""
    adapter_class: type[ClipAdapter] = ClipAdapter

    def claims(self, backbone: str) -> bool:
        """Whether ``MODEL.BACKBONE.NAME`` ``backbone`` is this family's."""
        raise NotImplementedError

    def owns(self, model: nn.Module) -> bool:
        """Whether ``model`` is one of this family's models."""
        raise NotImplementedError

    def resolve(self, backbone: str, weights: str = "") -> Path:
        """The weights file for ``backbone`` (and ``MODEL.BACKBONE.WEIGHTS`` ``weights``, when set)."""
        raise NotImplementedError

    def build(self, backbone: str, path: Path, device: str | torch.device) -> tuple[nn.Module, WeightsInfo]:
        """The model in ``path`` for ``backbone``, in eval mode on ``device``, and what it was built from."""
        raise NotImplementedError

    def check_named_architecture(self, backbone: str, path: Path, info: WeightsInfo) -> None:
        """Warn when the weights are not the architecture their name says (where a family can tell)."""


FAMILIES: list[BackboneFamily] = []


def register_family(family: BackboneFamily, fallback: bool = False) -> BackboneFamily:
    """Add a family; the ``fallback`` one takes every name no other family claims (OpenAI's: paths too)."""
    FAMILIES.insert(len(FAMILIES) if fallback else 0, family)
    return family


# Modules of the families that ship with vlprompt; each registers itself when imported.
BUNDLED_FAMILIES = ("vlprompt.modeling.backbones.openai", "vlprompt.modeling.backbones.open_clip_family")


def _families() -> list[BackboneFamily]:
    for module in BUNDLED_FAMILIES:
        if module not in sys.modules:
            importlib.import_module(module)
    return FAMILIES


def family_for_name(backbone: str) -> BackboneFamily:
    """The family that takes ``MODEL.BACKBONE.NAME`` ``backbone``."""
    for family in _families():
        if family.claims(backbone):
            return family
    raise LookupError(f"no backbone family takes {backbone!r}")  # the fallback family takes everything


def adapter_for(model: nn.Module | ClipAdapter) -> ClipAdapter:
    """The :class:`ClipAdapter` of ``model`` (an adapter is returned as is)."""
    if isinstance(model, ClipAdapter):
        return model
    for family in _families():
        if family.owns(model):
            return family.adapter_class(model)
    raise TypeError(f"{type(model).__module__}.{type(model).__name__} is not a model of a known CLIP family "
                    f"({', '.join(f.name for f in _families())})")


def unwrap_state_dict(loaded: Any, looks_complete: Any) -> Any:
    """The state dict inside ``loaded``: under ``"state_dict"`` or ``"model"`` when the top level is not
    one (``looks_complete(mapping)`` says), with a ``module.`` prefix (DataParallel) removed from every key."""
    state = loaded
    for wrapper_key in ("state_dict", "model"):
        if isinstance(state, Mapping) and not looks_complete(state) and isinstance(state.get(wrapper_key), Mapping):
            state = state[wrapper_key]
    return strip_module_prefix(state) if isinstance(state, Mapping) else state


_loaded_weights: dict[str, WeightsInfo] = {}


def loaded_weights(name: str) -> WeightsInfo | None:
    """What the last model loaded in this process for backbone ``name`` was built from, or None."""
    return _loaded_weights.get(name)


def note_weights(backbone: str, path: Path, info: WeightsInfo) -> None:
    """Remember and log which weights ran (the run's log and ``run.json`` say so); the family warns when
    they are not what their name says."""
    _loaded_weights[backbone] = info
    log.info("CLIP weights: %s (%s, sha256 %s)", info.file, info.architecture, info.sha256)
    family_for_name(backbone).check_named_architecture(backbone, path, info)
