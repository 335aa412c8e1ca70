"""The open_clip family (``pip install vlprompt[open_clip]``): LAION, DataComp, MetaCLIP and other
CLIP-style models trained with open_clip.

``MODEL.BACKBONE.NAME`` is ``open_clip:<model>@<pretrained tag>`` (``open_clip:ViT-B-16@laion2b_s34b_b88k``)
or ``open_clip:<model>`` plus ``MODEL.BACKBONE.WEIGHTS <file>``. A tag's weights are looked for as
``<model>@<tag>.safetensors`` (or ``.bin``/``.pt``) in :func:`open_clip_weights_dir`, and fetched with
open_clip's own downloader into that folder only when absent and downloads are allowed
(``VLPROMPT_OFFLINE``). Weights are read without running code (safetensors, or ``torch.load`` with
``weights_only``), then loaded into the architecture open_clip builds from the model's config.

Prompt learning reads the text feature at the end-of-text token of a causal text transformer. open_clip
models whose text tower is not causal or pools another token (SigLIP: last token, no causal mask; CoCa
and HF text towers) are refused with a message saying so.

Environment variables:
    VLPROMPT_OPEN_CLIP_DIR   folder holding open_clip weights (default ``~/.cache/vlprompt/open_clip``)
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vlprompt  # noqa: F401 - installs the torchvision shim that open_clip's import needs on CPU torch
from vlprompt.errors import UserError
from vlprompt.io import CheckpointError, UnsafeCheckpointError, atomic_copy, file_sha256, load_weights_file
from vlprompt.modeling.backbones.base import (
    BackboneFamily,
    ClipAdapter,
    EotRule,
    Preprocess,
    Tokenizer,
    WeightsInfo,
    register_family,
    unwrap_state_dict,
)
from vlprompt.modeling.backbones.openai import (
    OFFLINE_ENV,
    ClipWeightsNotFoundError,
    InvalidClipCheckpointError,
    offline,
)

PREFIX = "open_clip:"
OPEN_CLIP_DIR_ENV = "VLPROMPT_OPEN_CLIP_DIR"
DEFAULT_OPEN_CLIP_DIR = "~/.cache/vlprompt/open_clip"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Model configs that ship with vlprompt (the tiny random-weight models the tests build).
CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
SUPPORTED_POOLING = ("argmax", "eos")


class UnsupportedBackboneError(UserError, ValueError):
    """A model this toolkit's prompt learning cannot run on (the message says why)."""


def import_open_clip():
    """The ``open_clip`` package with vlprompt's model configs registered; a clear error when absent."""
    module = sys.modules.get("open_clip")
    if module is not None and getattr(module, "_vlprompt_configs", False):
        return module
    try:
        import open_clip
    except ImportError as err:
        raise UnsupportedBackboneError(
            f"open_clip backbones need the open_clip package ({err}); install it with "
            "pip install 'vlprompt[open_clip]' (or pip install open-clip-torch)"
        ) from err
    open_clip.add_model_config(CONFIG_DIR)
    open_clip._vlprompt_configs = True
    return open_clip


def open_clip_weights_dir() -> Path:
    """The folder where open_clip weights are looked for and downloaded to."""
    configured = os.environ.get(OPEN_CLIP_DIR_ENV, "").strip()
    return Path(configured or DEFAULT_OPEN_CLIP_DIR).expanduser()


def parse_name(backbone: str) -> tuple[str, str]:
    """(model, pretrained tag or "") of ``open_clip:<model>[@<tag>]``."""
    model, _, tag = backbone[len(PREFIX):].strip().partition("@")
    return model.strip(), tag.strip()


def _check_model(backbone: str, model: str) -> None:
    open_clip = import_open_clip()
    if model not in open_clip.list_models():
        raise ClipWeightsNotFoundError(
            f'MODEL.BACKBONE.NAME "{backbone}": "{model}" is not an open_clip model config; known models '
            f"include {', '.join(sorted(open_clip.list_models())[:12])}, ... (open_clip.list_models() lists all)"
        )


def _download_pretrained(model: str, tag: str, folder: Path) -> Path:
    """Fetch ``model``'s ``tag`` weights with open_clip's downloader (the only network access of this
    family; tests replace it); returns the downloaded file."""
    open_clip = import_open_clip()
    cfg = open_clip.get_pretrained_cfg(model, tag)
    return Path(open_clip.download_pretrained(cfg, cache_dir=str(folder)))


def _resolve_tag(backbone: str, model: str, tag: str) -> Path:
    open_clip = import_open_clip()
    tags = open_clip.list_pretrained_tags_by_model(model)
    folder = open_clip_weights_dir()
    stem = f"{model}@{tag}"
    for suffix in WEIGHT_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    how = (f"To provide them: save the weights as {folder / (stem + '.safetensors')} (or .bin/.pt); or set "
           f"{OPEN_CLIP_DIR_ENV} to the folder holding {stem}.*; or pass the file as MODEL.BACKBONE.WEIGHTS "
           f'with MODEL.BACKBONE.NAME "{PREFIX}{model}".')
    if tag not in tags:
        raise ClipWeightsNotFoundError(
            f'MODEL.BACKBONE.NAME "{backbone}": open_clip knows no pretrained tag "{tag}" for {model} '
            f"(its tags: {', '.join(tags) or 'none'}), and {folder} has no {stem}.*. {how}"
        )
    looked_for = f'open_clip weights for "{backbone}" not found: looked for {stem}.* in {folder}.'
    if offline():
        raise ClipWeightsNotFoundError(f"{looked_for} Downloading is off because {OFFLINE_ENV} is set. {how}")
    downloads = folder / ".downloads"
    try:
        fetched = _download_pretrained(model, tag, downloads)
        target = folder / f"{stem}{fetched.suffix if fetched.suffix in WEIGHT_SUFFIXES else '.bin'}"
        atomic_copy(fetched, target)  # our name, so the next (offline) run finds it
    except Exception as err:  # network, hub or disk errors all mean "no weights"
        raise ClipWeightsNotFoundError(
            f"{looked_for} Downloading it with open_clip failed: {type(err).__name__}: {err}. {how}"
        ) from err
    finally:
        shutil.rmtree(downloads, ignore_errors=True)
    return target


def load_open_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (safetensors, or a ``torch.save`` file read with ``weights_only``)."""
    if not path.is_file():
        raise ClipWeightsNotFoundError(f"open_clip weights {path} do not exist (or are not a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path))
        else:
            loaded = load_weights_file(path)
    except UnsafeCheckpointError:
        raise
    except (CheckpointError, OSError, ValueError, RuntimeError) as err:
        raise InvalidClipCheckpointError(
            f"{path} is not an open_clip weights file that can be read without running code ({err})"
        ) from err
    state = unwrap_state_dict(loaded, lambda mapping: "positional_embedding" in mapping or "text.positional_embedding"
                              in mapping)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidClipCheckpointError(f"{path} holds no state dict of tensors")
    return dict(state)


class _NoRandomInitNote(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" note: vlprompt loads the weights itself, next."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def create_architecture(model_name: str) -> nn.Module:
    """open_clip's model ``model_name`` with random weights (from its config; nothing is downloaded)."""
    open_clip = import_open_clip()
    quiet = _NoRandomInitNote()
    logging.getLogger().addFilter(quiet)  # open_clip notes it on the root logger
    try:
        return open_clip.create_model(model_name, pretrained=None, device="cpu")
    finally:
        logging.getLogger().removeFilter(quiet)


def _refusal(model: nn.Module, name: str) -> str | None:
    """Why prompt learning cannot run on ``model``, or None when it can."""
    open_clip = import_open_clip()
    text = model.text if isinstance(model, open_clip.CustomTextCLIP) else model
    if not hasattr(text, "token_embedding") or not hasattr(text, "transformer"):
        return f"its text tower is {type(text).__name__}, not open_clip's CLIP text transformer"
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", None))
    if getattr(text, "attn_mask", None) is None or pool not in SUPPORTED_POOLING or getattr(text, "cls_emb", None) is not None:
        return (f"its text tower is not causal or pools the {pool!r} token (SigLIP-style); prompt learning here "
                "reads the feature at the end-of-text token of a causal text transformer")
    if not all(isinstance(block.attn, nn.MultiheadAttention) for block in text.transformer.resblocks):
        return "its text blocks use open_clip's custom attention, not nn.MultiheadAttention"
    return None


class OpenClipTokenizer(Tokenizer):
    """open_clip's BPE tokenizer for one model (context length from the model)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.context_length = int(tokenizer.context_length)
        self.sot_id = int(tokenizer.sot_token_id)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        return self._tokenizer(texts)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def token_text(self, token_id: int) -> str:
        return self._tokenizer.decoder[int(token_id)]


@lru_cache(maxsize=8)
def _tokenizer_for(model_name: str, context_length: int) -> OpenClipTokenizer:
    tokenizer = import_open_clip().get_tokenizer(model_name, context_length=context_length)
    if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "decoder"):
        raise UnsupportedBackboneError(f"open_clip model {model_name} uses {type(tokenizer).__name__}, not CLIP's "
                                       "BPE tokenizer; prompt learning here supports CLIP-tokenized models")
    return OpenClipTokenizer(tokenizer)


class OpenClipAdapter(ClipAdapter):
    """``open_clip.CLIP`` (and ``CustomTextCLIP`` with open_clip's text transformer): batch-first
    attention, optional layer scale, a pooling rule and a logit bias of its own."""

    family = "open_clip"

    @property
    def text(self) -> nn.Module:
        return getattr(self.model, "text", self.model)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def tokenizer(self) -> OpenClipTokenizer:
        name = getattr(self.model, "_vlprompt_model_name", "")
        return _tokenizer_for(name, self.context_length)

    def eot_rule(self) -> EotRule:
        text = self.text
        if getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax")) == "eos":
            return EotRule(int(getattr(text, "text_eos_id", getattr(text, "eos_id", 0))))
        return EotRule()

    def batch_first(self) -> bool:
        return bool(getattr(self.transformer, "batch_first", True))

    def half(self) -> None:
        import_open_clip().model.convert_weights_to_lp(self.model, dtype=torch.float16)

    @property
    def preprocess(self) -> Preprocess:
        cfg = import_open_clip().get_model_preprocess_cfg(self.model)
        size = cfg.get("size", self.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        interpolation = cfg.get("interpolation", "bicubic")
        return Preprocess(int(size), tuple(cfg.get("mean", Preprocess.mean)), tuple(cfg.get("std", Preprocess.std)),
                          interpolation)


class OpenClipFamily(BackboneFamily):
    """Names ``open_clip:<model>[@<tag>]``; weights from a tag (local folder or download) or a file."""

    name = "open_clip"
    adapter_class = OpenClipAdapter

    def claims(self, backbone: str) -> bool:
        return backbone.startswith(PREFIX)

    def owns(self, model: nn.Module) -> bool:
        open_clip = sys.modules.get("open_clip")
        return open_clip is not None and isinstance(model, (open_clip.CLIP, open_clip.CustomTextCLIP))

    def resolve(self, backbone: str, weights: str = "") -> Path:
        model, tag = parse_name(backbone)
        _check_model(backbone, model)
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ClipWeightsNotFoundError(f'MODEL.BACKBONE.WEIGHTS "{weights}" does not exist (or is not a file)')
            return path
        if not tag:
            raise ClipWeightsNotFoundError(
                f'MODEL.BACKBONE.NAME "{backbone}" names no weights: add a pretrained tag '
                f"({PREFIX}{model}@<tag>, tags: {', '.join(import_open_clip().list_pretrained_tags_by_model(model)) or 'none'}) "
                "or set MODEL.BACKBONE.WEIGHTS to a local weights file"
            )
        return _resolve_tag(backbone, model, tag)

    def build(self, backbone: str, path: Path, device: str | torch.device) -> tuple[nn.Module, WeightsInfo]:
        open_clip = import_open_clip()
        model_name, tag = parse_name(backbone)
        state = load_open_clip_state_dict(path)
        model = create_architecture(model_name)
        reason = _refusal(model, model_name)
        if reason is not None:
            raise UnsupportedBackboneError(f'MODEL.BACKBONE.NAME "{backbone}" cannot be used: {reason}. README '
                                           '"open_clip backbones" lists what works.')
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise InvalidClipCheckpointError(
                f"{path} does not fit open_clip's {model_name} ({str(err).splitlines()[0]}; "
                f"{str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else ''})"
            ) from err
        if tag and open_clip.get_pretrained_cfg(model_name, tag):
            pretrained = open_clip.get_pretrained_cfg(model_name, tag)
            cfg = dict(open_clip.get_model_preprocess_cfg(model))
            cfg.update({key: pretrained[key] for key in ("mean", "std", "interpolation", "resize_mode")
                        if key in pretrained})
            open_clip.model.set_model_preprocess_cfg(model, cfg)
        model._vlprompt_model_name = model_name
        info = WeightsInfo(file=os.path.abspath(path), sha256=file_sha256(path),
                           architecture=f"open_clip {model_name}" + (f"@{tag}" if tag else ""))
        return model.eval().to(torch.device(device)), info


register_family(OpenClipFamily())
