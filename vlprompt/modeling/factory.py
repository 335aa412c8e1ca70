"""``create_clip``: a CLIP-like model of any family, with its adapter, preprocessing and tokenizer, in the
precision a trainer asks for. The one loader every trainer, the interpreter and the demo use.

``MODEL.BACKBONE.NAME`` picks the family (``open_clip:<model>[@<tag>]`` for open_clip, anything else is
OpenAI's: a model name, a bundled name or a checkpoint path); ``MODEL.BACKBONE.WEIGHTS`` may name a local
weights file for families that separate architecture and weights. Loaded models are noted (file, SHA-256,
architecture) for the run's log and ``run.json``.
"""

from __future__ import annotations

import copy as copy_module
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlprompt.engine.config import register_cfg_extension
from vlprompt.errors import UserValueError
from vlprompt.io import file_sha256
from vlprompt.modeling.backbones.base import (
    ClipAdapter,
    Preprocess,
    Tokenizer,
    WeightsInfo,
    adapter_for,
    family_for_name,
    loaded_weights,
    note_weights,
)

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
CLIP_CACHE_SIZE = 2  # models kept by load_clip_cached; real CLIPs are 0.3-1.7 GB each


@register_cfg_extension
def add_backbone_keys(cfg) -> None:
    """``MODEL.BACKBONE.WEIGHTS``: a local weights file for a backbone name that names only an architecture
    (``open_clip:ViT-B-16``); not a Dassl key, so added like a method's keys."""
    cfg.MODEL.BACKBONE.WEIGHTS = ""


def backbone_of(cfg_or_name) -> tuple[str, str]:
    """(``MODEL.BACKBONE.NAME``, ``MODEL.BACKBONE.WEIGHTS``) of a config, or (name, "") of a plain name."""
    if isinstance(cfg_or_name, (str, os.PathLike)):
        return os.fspath(cfg_or_name), ""
    backbone = cfg_or_name.MODEL.BACKBONE
    return backbone.NAME, str(backbone.get("WEIGHTS", "") or "")


def resolve_weights(name: str, weights: str = "") -> Path:
    """The weights file ``MODEL.BACKBONE.NAME`` (and ``WEIGHTS``) stand for, downloaded only when allowed."""
    return family_for_name(name).resolve(name, weights)


def load_clip(name: str, device: str | torch.device = "cpu", weights: str = "") -> nn.Module:
    """The model for ``MODEL.BACKBONE.NAME`` ``name``, in eval mode on ``device``, in the dtypes its family
    ships (OpenAI's fp16 weights stay fp16, as CoOp's ``load_clip_to_cpu``); see :func:`apply_precision`."""
    family = family_for_name(name)
    path = family.resolve(name, weights)
    model, info = family.build(name, path, device)
    note_weights(name, path, info)
    return model


_cache: OrderedDict[tuple, tuple[nn.Module, WeightsInfo | None]] = OrderedDict()
_cache_lock = threading.Lock()


def load_clip_cached(name: str, device: str | torch.device = "cpu", weights: str = "") -> nn.Module:
    """:func:`load_clip`, remembering the last few models by (file, its modification, device).

    The model returned is shared between callers: don't change it in place (``apply_precision``,
    ``.to``); copy it first when you must. Rewriting the file makes the next call load it afresh.
    """
    given = resolve_weights(name, weights)
    path = given.resolve()
    stat = path.stat()
    device = torch.device(device)
    key = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, str(device), name)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
    if hit is not None:
        if hit[1] is not None:
            note_weights(name, given, hit[1])  # each run's log and record say which weights it used
        return hit[0]
    model = load_clip(name, device, weights)
    info = loaded_weights(name)
    with _cache_lock:
        for stale in [k for k in _cache if k[0] == key[0] and k[4] == key[4] and k[5] == key[5]]:
            del _cache[stale]  # an older version of the same file: it can never be asked for again
        _cache[key] = (model, info)
        while len(_cache) > CLIP_CACHE_SIZE:
            _cache.popitem(last=False)
    return model


def clear_clip_cache() -> None:
    """Forget every model kept by :func:`load_clip_cached`."""
    with _cache_lock:
        _cache.clear()


def apply_precision(model: nn.Module, prec: str, device: str | torch.device | None = None) -> tuple[nn.Module, str]:
    """Put ``model`` in the dtype for a trainer's ``PREC``; returns (model, the precision in effect).

    ``fp16`` keeps the family's half weights on accelerators but becomes fp32 on CPU (half matmuls there are
    slow or unsupported), with a warning; ``fp32`` and ``amp`` use fp32 weights; ``bf16`` casts everything.
    """
    if prec not in PRECISIONS:
        raise ValueError(f'precision "{prec}" is not one of {", ".join(PRECISIONS)}')
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if prec == "fp16":
        if device.type == "cpu":
            warnings.warn("PREC fp16 is not supported on CPU; using fp32 instead", UserWarning, stacklevel=2)
            return model.float(), "fp32"
        adapter_for(model).half()
        return model, "fp16"
    if prec == "bf16":
        return model.to(torch.bfloat16), "bf16"
    return model.float(), prec


def clip_input_resolution(model: nn.Module) -> int:
    """Image side length the vision encoder expects (``INPUT.SIZE`` must match it)."""
    return adapter_for(model).preprocess.size


def clip_text_width(model: nn.Module) -> int:
    """Width of the text transformer (the size of a token embedding, i.e. of a learnable context vector)."""
    return adapter_for(model).text_width


def clip_embed_dim(model: nn.Module) -> int:
    """Size of the joint image-text embedding (what encode_image/encode_text return)."""
    return adapter_for(model).embed_dim


@dataclass
class ClipBundle:
    """What :func:`create_clip` returns: the model, its adapter, the preprocessing its image tower needs,
    its tokenizer, and the precision in effect."""

    model: nn.Module
    adapter: ClipAdapter
    preprocess: Preprocess
    tokenizer: Tokenizer
    precision: str


def create_clip(cfg_or_name, device: str | torch.device = "cpu", precision: str = "fp32", *,
                cached: bool = False, frozen: bool = True) -> ClipBundle:
    """The CLIP-like model for a config (``MODEL.BACKBONE.NAME``/``WEIGHTS``) or a backbone name, on
    ``device`` in ``precision`` (one of :data:`PRECISIONS`; fp16 becomes fp32 on a CPU, with a warning).

    ``cached`` reuses a model loaded earlier in this process (TPT over several datasets) and works on a
    copy of it; ``frozen`` turns its gradients off.
    """
    name, weights = backbone_of(cfg_or_name)
    if cached:
        model = copy_module.deepcopy(load_clip_cached(name, device, weights))
    else:
        model = load_clip(name, device, weights)
    model, precision = apply_precision(model, precision, device)
    if frozen:
        model.requires_grad_(False)
    adapter = adapter_for(model)
    return ClipBundle(model, adapter, adapter.preprocess, adapter.tokenizer, precision)


def check_input_size(cfg, preprocess: Preprocess) -> None:
    """``INPUT.SIZE`` must be the image tower's input resolution: one clear error before any work."""
    resolution = preprocess.size
    if cfg.INPUT.SIZE[0] != resolution:
        raise UserValueError(
            f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the CLIP backbone's input resolution "
            f"{resolution}; set INPUT.SIZE ({resolution}, {resolution})"
        )


def weights_fingerprint_extras(cfg) -> dict:
    """What a CLIP-based run's config cannot say about its results: the SHA-256 of the weights file
    ``MODEL.BACKBONE.NAME`` resolves to (the same name can mean other weights elsewhere), and of
    ``MODEL.INIT_WEIGHTS`` when set. For ``fingerprint_extras``; hashes are cached per file."""
    extras = {"weights_sha256": file_sha256(resolve_weights(*backbone_of(cfg)))}
    if cfg.MODEL.INIT_WEIGHTS and os.path.isfile(cfg.MODEL.INIT_WEIGHTS):
        extras["init_weights_sha256"] = file_sha256(cfg.MODEL.INIT_WEIGHTS)
    return extras
