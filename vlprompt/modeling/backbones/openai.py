"""The OpenAI CLIP family (the ``clip`` package): model names, a local weights folder, checkpoint files,
downloads, and its adapter.

The old module ``vlprompt.clip_backbone`` is this one. Where OpenAI weights come from, how they are checked
and which formats are accepted is decided here only. ``MODEL.BACKBONE.NAME`` is either an OpenAI model name
(``RN50`` … ``ViT-L/14@336px``), looked up as clip's file name (``ViT-B-16.pt``) in :func:`clip_weights_dir`
and downloaded only when absent and allowed, the name of weights shipped inside vlprompt
(:data:`BUNDLED_WEIGHTS`: ``micro-clip``, pretrained on the toy world), or the path of a checkpoint file
(a TorchScript archive as OpenAI ships, or a plain state dict; fp16 or fp32). Files are read by
:mod:`vlprompt.io`, which never runs code stored in them (no ``torch.jit.load``, no unrestricted pickle).

Every model loaded is noted (:func:`loaded_weights`): the file, its SHA-256 and the architecture its
tensors really have, which the run's log and ``run.json`` record.

Environment variables:
    VLPROMPT_CLIP_DIR   folder holding the OpenAI ``.pt`` files (default: clip's cache ``~/.cache/clip``)
    VLPROMPT_OFFLINE    any non-empty value other than ``0`` forbids downloads
"""

from __future__ import annotations

import logging
import os
import sys
import types
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

import vlprompt
from vlprompt.errors import UserError
from vlprompt.io import CheckpointError, UnsafeCheckpointError, atomic_target, file_sha256, load_weights_file
from vlprompt.modeling.backbones.base import (
    BackboneFamily,
    ClipAdapter,
    Preprocess,
    Tokenizer,
    WeightsInfo,
    register_family,
    unwrap_state_dict,
)

CLIP_DIR_ENV = "VLPROMPT_CLIP_DIR"
OFFLINE_ENV = "VLPROMPT_OFFLINE"
DEFAULT_CLIP_DIR = "~/.cache/clip"  # clip.load's own default download_root

# Keys every OpenAI CLIP state dict has; build_model reads them to infer the architecture.
_REQUIRED_KEYS = ("text_projection", "token_embedding.weight", "positional_embedding", "ln_final.weight")
# OpenAI's released CLIPs by the shapes build_model reads: (vision family, vision width, vision layers,
# patch size, image resolution, embedding size, text width, text layers) -> model name.
_OPENAI_ARCHITECTURES: dict[tuple, str] = {
    ("ResNet", 64, (3, 4, 6, 3), None, 224, 1024, 512, 12): "RN50",
    ("ResNet", 64, (3, 4, 23, 3), None, 224, 512, 512, 12): "RN101",
    ("ResNet", 80, (4, 6, 10, 6), None, 288, 640, 640, 12): "RN50x4",
    ("ResNet", 96, (6, 8, 18, 8), None, 384, 768, 768, 12): "RN50x16",
    ("ResNet", 128, (3, 15, 36, 10), None, 448, 1024, 1024, 12): "RN50x64",
    ("ViT", 768, 12, 32, 224, 512, 512, 12): "ViT-B/32",
    ("ViT", 768, 12, 16, 224, 512, 512, 12): "ViT-B/16",
    ("ViT", 1024, 24, 14, 224, 768, 768, 12): "ViT-L/14",
    ("ViT", 1024, 24, 14, 336, 768, 768, 12): "ViT-L/14@336px",
}
log = logging.getLogger(__name__)
# Names of CLIP weights that ship inside the package -> their files, relative to the package's folder.
BUNDLED_WEIGHTS: dict[str, str] = {"micro-clip": "toyworld/weights/micro_clip.pt"}


class ClipWeightsNotFoundError(UserError, FileNotFoundError):
    """The CLIP weights asked for are not on disk and could not be downloaded (or the name is unknown)."""


class InvalidClipCheckpointError(UserError, ValueError):
    """A file exists but holds no CLIP weights that ``clip.model.build_model`` can use."""


def import_clip() -> types.ModuleType:
    """The ``clip`` package (clip-anytorch), imported so it works on any setuptools.

    clip does ``from pkg_resources import packaging``: setuptools>=82 has no ``pkg_resources`` (a stand-in
    exposing ``packaging`` is installed then), and older ones warn that it is deprecated (silenced here).
    """
    clip = sys.modules.get("clip")
    if clip is not None and hasattr(clip, "model") and hasattr(clip, "tokenize"):
        return clip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=DeprecationWarning)
        try:
            import pkg_resources  # noqa: F401 - clip imports it next; importing it here costs nothing extra
        except ImportError:
            sys.modules["pkg_resources"] = _pkg_resources_stand_in()
        import clip
        import clip.model  # build_model, convert_weights, CLIP
    return clip


def _pkg_resources_stand_in() -> types.ModuleType:
    """A module offering the one thing clip takes from pkg_resources: ``packaging`` (for a version check)."""
    module = types.ModuleType("pkg_resources")
    try:
        import packaging.version

        module.packaging = packaging
    except ImportError:  # clip only compares torch's version with "1.7.1"; numeric parts are enough for that
        def parse(version: str) -> tuple[int, ...]:
            parts = []
            for piece in version.split("+")[0].split("."):
                digits = "".join(ch for ch in piece if ch.isdigit())
                parts.append(int(digits or 0))
            return tuple(parts)

        module.packaging = types.SimpleNamespace(version=types.SimpleNamespace(parse=parse))
    return module


def clip_weights_dir() -> Path:
    """The folder where OpenAI model files are looked for and downloaded to."""
    configured = os.environ.get(CLIP_DIR_ENV, "").strip()
    return Path(configured or DEFAULT_CLIP_DIR).expanduser()


def clip_model_urls() -> dict[str, str]:
    """OpenAI model name -> download URL, as clip knows them (the URL's second-to-last part is the SHA256)."""
    return dict(import_clip().clip._MODELS)


def offline() -> bool:
    """Whether downloads are forbidden (``VLPROMPT_OFFLINE`` set to anything but empty or ``0``)."""
    return os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0")


def _download_file(url: str, dest: Path) -> None:
    """Write the bytes at ``url`` to ``dest`` (the only network access in vlprompt; tests replace it)."""
    import urllib.request

    from tqdm import tqdm

    log.info(f"Downloading CLIP weights {url} to {dest}")
    with urllib.request.urlopen(url, timeout=60) as source, open(dest, "wb") as output:
        total = int(source.info().get("Content-Length") or 0) or None
        with tqdm(total=total, unit="iB", unit_scale=True, ncols=80, file=sys.stderr) as progress:
            while True:
                chunk = source.read(1 << 20)
                if not chunk:
                    break
                output.write(chunk)
                progress.update(len(chunk))


def _how_to_provide(name: str, filename: str, folder: Path, url: str) -> str:
    return (
        f"To provide them: copy {filename} (OpenAI's release, {url}) into {folder}; "
        f"or set {CLIP_DIR_ENV} to the folder that holds it (now: {_env_value(CLIP_DIR_ENV)}, "
        f"default {DEFAULT_CLIP_DIR}); or pass the checkpoint file's path as MODEL.BACKBONE.NAME instead of "
        f'"{name}". Downloads are {"off" if offline() else "on"} ({OFFLINE_ENV}={_env_value(OFFLINE_ENV)}).'
    )


def _env_value(variable: str) -> str:
    value = os.environ.get(variable)
    return "unset" if value is None else repr(value)


def resolve_clip_weights(name: str) -> Path:
    """The checkpoint file for ``MODEL.BACKBONE.NAME``: an OpenAI model name or a checkpoint path.

    A model name is looked up first (as ``clip.load`` does) as clip's file name in :func:`clip_weights_dir`;
    a file already there is trusted as is, an absent one is downloaded (SHA256-checked, written atomically)
    unless offline. Anything else must be an existing file. Raises :class:`ClipWeightsNotFoundError`.
    """
    urls = clip_model_urls()
    if name in urls:
        return _resolve_model_name(name, urls[name])
    if name in BUNDLED_WEIGHTS:
        return _resolve_bundled(name)
    path = Path(name).expanduser()
    if path.is_file():
        return path
    raise ClipWeightsNotFoundError(
        f'CLIP backbone "{name}" is neither an existing checkpoint file (looked for {path.absolute()}) '
        f"nor a CLIP model name. Valid names: {', '.join([*urls, *BUNDLED_WEIGHTS])}. A checkpoint file may be a "
        f"TorchScript archive or a state dict (fp16 or fp32)."
    )


def bundled_path(name: str) -> Path:
    """Where the bundled weights ``name`` live inside the installed package."""
    return Path(vlprompt.__file__).resolve().parent / BUNDLED_WEIGHTS[name]


def _resolve_bundled(name: str) -> Path:
    path = bundled_path(name)
    if not path.is_file():
        raise ClipWeightsNotFoundError(
            f'The bundled CLIP weights "{name}" should be at {path}, which is missing: reinstall vlprompt, or '
            f"recreate them with scripts/toyworld/pretrain_micro_clip.py (it writes that file)."
        )
    return path


def _resolve_model_name(name: str, url: str) -> Path:
    folder = clip_weights_dir()
    filename = os.path.basename(url)
    target = folder / filename
    if target.is_file():
        return target
    looked_for = f'CLIP weights for "{name}" not found: looked for {target} in {folder}.'
    if offline():
        raise ClipWeightsNotFoundError(
            f"{looked_for} Downloading is off because {OFFLINE_ENV} is set. "
            + _how_to_provide(name, filename, folder, url)
        )

    expected_sha256 = url.split("/")[-2]
    try:
        # Written beside the target and renamed only once complete and checked: an interrupted or
        # tampered download never leaves a file under the real name, which would later be trusted.
        with atomic_target(target) as temp_path:
            _download_file(url, Path(temp_path))
            actual_sha256 = file_sha256(temp_path)
            if actual_sha256 != expected_sha256:
                raise ClipWeightsNotFoundError(
                    f"{looked_for} It was downloaded from {url}, but its SHA256 {actual_sha256} does not match "
                    f"the expected {expected_sha256} (a corrupted or intercepted download); nothing was kept. "
                    + _how_to_provide(name, filename, folder, url)
                )
    except ClipWeightsNotFoundError:
        raise
    except Exception as err:  # network, HTTP, disk or permission errors: all mean "no weights"
        raise ClipWeightsNotFoundError(
            f"{looked_for} Downloading it from {url} failed: {type(err).__name__}: {err}. "
            + _how_to_provide(name, filename, folder, url)
        ) from err
    return target


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The CLIP state dict in ``path`` (on CPU, dtypes as stored), read without running code from the file.

    Accepts a TorchScript archive (OpenAI's releases; read by :func:`vlprompt.io.read_torchscript_state_dict`,
    not ``torch.jit.load``) or a ``torch.save``'d state dict (``weights_only``), also one wrapped under
    ``"state_dict"`` or ``"model"`` or saved from ``DataParallel`` (``module.`` prefixes). A file that needs
    code to be read raises :class:`vlprompt.io.UnsafeCheckpointError` unless ``VLPROMPT_TRUST_CHECKPOINTS=1``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClipWeightsNotFoundError(f"CLIP checkpoint {path} does not exist (or is not a file)")
    try:
        state = load_weights_file(path)
    except UnsafeCheckpointError:
        raise  # names the file, what would run, and the opt-in
    except CheckpointError as err:
        raise InvalidClipCheckpointError(
            f"{path} is not a CLIP checkpoint: it is neither a TorchScript archive nor a state dict that can be "
            f"read without running code ({err}). Pass an OpenAI .pt file or a file written by "
            f"torch.save(model.state_dict())."
        ) from err
    return _clip_state_from(state, path)


def _clip_state_from(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap and check a loaded object: it must be a mapping of CLIP parameter names to tensors."""
    if not isinstance(loaded, Mapping):
        raise InvalidClipCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a CLIP state dict (a mapping of parameter names to tensors)"
        )
    state = unwrap_state_dict(loaded, _looks_like_clip)
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        sample = ", ".join(list(map(str, state))[:6]) or "nothing"
        raise InvalidClipCheckpointError(
            f"{path} has no CLIP weights: keys {', '.join(missing)} are missing (it holds {sample}"
            f"{', ...' if len(state) > 6 else ''}). A prompt-learner checkpoint goes to MODEL.INIT_WEIGHTS or "
            f"--model-dir, not MODEL.BACKBONE.NAME."
        )
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise InvalidClipCheckpointError(f"{path}: entries {', '.join(not_tensors[:6])} are not tensors")
    return dict(state)


def _looks_like_clip(state: Mapping) -> bool:
    return all(key in state or f"module.{key}" in state for key in _REQUIRED_KEYS)


def clip_architecture(state: Mapping[str, torch.Tensor]) -> str:
    """The architecture a CLIP state dict really has, from its tensor shapes (as ``build_model`` reads
    them): an OpenAI model name such as ``"ViT-B/16"`` or ``"RN50"``, else a description such as
    ``"ViT width 64, 2 layers, patch 16, 224 px"``."""
    try:
        if "visual.proj" in state:
            width, patch = state["visual.conv1.weight"].shape[0], state["visual.conv1.weight"].shape[-1]
            layers = sum(1 for k in state if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            family, resolution = "ViT", patch * grid
            description = f"ViT width {width}, {layers} layers, patch {patch}, {resolution} px"
        else:
            family, patch = "ResNet", None
            layers = tuple(
                len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{block}.")}) for block in (1, 2, 3, 4)
            )
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            resolution = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32
            description = f"ResNet width {width}, blocks {'-'.join(map(str, layers))}, {resolution} px"
        text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
        signature = (family, int(width), layers, patch, int(resolution), int(state["text_projection"].shape[1]),
                     int(state["ln_final.weight"].shape[0]), text_layers)
    except (KeyError, IndexError, AttributeError) as err:
        return f"unrecognised CLIP layout (no {err})"
    return _OPENAI_ARCHITECTURES.get(signature, description)


def _named_architecture(name: str, path: Path) -> str | None:
    """The OpenAI model a backbone name or file name claims to be (``ViT-B/16``, ``ViT-B-16.pt``), if any."""
    urls = clip_model_urls()
    if name in urls:
        return name
    return next((model for model, url in urls.items() if os.path.basename(url) == path.name), None)


def describe_weights(name: str, path: Path, state: Mapping[str, torch.Tensor]) -> WeightsInfo:
    """The :class:`WeightsInfo` of ``state``, read from ``path`` for ``MODEL.BACKBONE.NAME`` ``name``."""
    file = name if name in BUNDLED_WEIGHTS else os.path.abspath(path)
    return WeightsInfo(file=file, sha256=file_sha256(path), architecture=clip_architecture(state))


def _build_clip(name: str, path: Path, device: str | torch.device) -> tuple[nn.Module, WeightsInfo]:
    state = load_clip_state_dict(path)
    info = describe_weights(name, path, state)
    clip = import_clip()
    try:
        model = clip.model.build_model(state)
    except (KeyError, RuntimeError, AssertionError, IndexError) as err:
        raise InvalidClipCheckpointError(
            f"{path} does not fit OpenAI's CLIP architecture ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err
    return model.eval().to(torch.device(device)), info




def _named_architecture_warning(name: str, path: Path, info: WeightsInfo) -> None:
    named = _named_architecture(name, path)
    if named is not None and named != info.architecture:
        log.warning(
            'The CLIP weights "%s" are named %s but hold %s weights (inferred from their shapes); the run uses '
            "what the file holds. Check MODEL.BACKBONE.NAME.", info.file, named, info.architecture,
        )


# ------------------------------------------------------------------------------------------- adapter
class OpenAITokenizer(Tokenizer):
    """clip's BPE tokenizer (``clip.tokenize``; 77 tokens, no truncation), through its public module."""

    context_length = 77

    def __init__(self) -> None:
        from clip.simple_tokenizer import SimpleTokenizer

        import_clip()
        self._bpe = SimpleTokenizer()
        self.sot_id = self._bpe.encoder["<|startoftext|>"]

    def __call__(self, texts):
        return import_clip().tokenize(texts)

    def encode(self, text: str) -> list[int]:
        return self._bpe.encode(text)

    def token_text(self, token_id: int) -> str:
        return self._bpe.decoder[int(token_id)]


@lru_cache(maxsize=1)
def openai_tokenizer() -> OpenAITokenizer:
    """The one tokenizer instance (building its vocabulary takes a moment)."""
    return OpenAITokenizer()


class OpenAIAdapter(ClipAdapter):
    """``clip.model.CLIP``: sequence-first ``nn.MultiheadAttention`` blocks, features read at the EOT token."""

    family = "openai"

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def tokenizer(self) -> OpenAITokenizer:
        return openai_tokenizer()

    def half(self) -> None:
        import_clip().model.convert_weights(self.model)  # a no-op on a freshly built CLIP; undoes .float()

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(int(self.visual.input_resolution))


class OpenAIFamily(BackboneFamily):
    """OpenAI's CLIP releases, vlprompt's bundled weights, and any checkpoint file of that architecture
    (the fallback family: it takes every name no other family claims)."""

    name = "openai"
    adapter_class = OpenAIAdapter

    def claims(self, backbone: str) -> bool:
        return True

    def owns(self, model: nn.Module) -> bool:
        return isinstance(model, import_clip().model.CLIP)

    def resolve(self, backbone: str, weights: str = "") -> Path:
        if weights:
            raise InvalidClipCheckpointError(
                f'MODEL.BACKBONE.WEIGHTS "{weights}" is only for open_clip backbones; for an OpenAI CLIP pass '
                f"the checkpoint file's path as MODEL.BACKBONE.NAME (now \"{backbone}\")"
            )
        return resolve_clip_weights(backbone)

    def build(self, backbone: str, path: Path, device: str | torch.device) -> tuple[nn.Module, WeightsInfo]:
        return _build_clip(backbone, path, device)

    def check_named_architecture(self, backbone: str, path: Path, info: WeightsInfo) -> None:
        _named_architecture_warning(backbone, path, info)


register_family(OpenAIFamily(), fallback=True)

# What ``vlprompt.clip_backbone`` (this module) has always offered: the family-independent loaders.
from vlprompt.modeling.backbones.base import loaded_weights
from vlprompt.modeling.factory import (
    CLIP_CACHE_SIZE,
    PRECISIONS,
    apply_precision,
    clear_clip_cache,
    clip_embed_dim,
    clip_input_resolution,
    clip_text_width,
    load_clip,
    load_clip_cached,
)

__all__ = [
    "BUNDLED_WEIGHTS", "CLIP_CACHE_SIZE", "CLIP_DIR_ENV", "OFFLINE_ENV", "PRECISIONS", "ClipWeightsNotFoundError",
    "InvalidClipCheckpointError", "OpenAIAdapter", "OpenAIFamily", "WeightsInfo", "apply_precision",
    "clear_clip_cache", "clip_architecture", "clip_embed_dim", "clip_input_resolution", "clip_model_urls",
    "clip_text_width", "clip_weights_dir", "describe_weights", "import_clip", "load_clip", "load_clip_cached",
    "load_clip_state_dict", "loaded_weights", "offline", "resolve_clip_weights",
]
