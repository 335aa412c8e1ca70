"""Tiny random-weight CLIPs built with clip's own model code, for tests and for the demo without downloads.

They have OpenAI's architecture and state-dict layout (so ``build_model`` rebuilds them exactly) at a few
million parameters: the text side keeps the real tokenizer's vocabulary and context length, everything
else is shrunk. Weights are random but deterministic per seed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from vlprompt.io import atomic_save, atomic_target
from vlprompt.modeling.backbones.openai import import_clip

# clip.model.CLIP keyword arguments. build_model infers heads as width // 64 (vision: width // 64 for a ViT,
# width * 32 // 64 for the ResNet's attention pool), so widths of 64 mean one head and the rebuilt model
# is the same model. The vocabulary must stay 49408: the tokenizer emits ids up to 49407.
_TINY_TEXT = {"context_length": 77, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 1,
              "transformer_layers": 2}
TINY_SPECS: dict[str, dict] = {
    "vit": {"embed_dim": 64, "image_resolution": 224, "vision_layers": 2, "vision_width": 64,
            "vision_patch_size": 16, **_TINY_TEXT},
    # width 16: the attention pool works at width * 32, so 16 gives 512 rather than RN50's 2048.
    "rn": {"embed_dim": 64, "image_resolution": 224, "vision_layers": (1, 1, 1, 1), "vision_width": 16,
           "vision_patch_size": None, **_TINY_TEXT},
}
FORMATS = ("state_dict", "torchscript")


def build_tiny_clip(kind: str = "vit", seed: int = 0, image_resolution: int | None = None) -> nn.Module:
    """A tiny fp32 ``clip.model.CLIP`` in eval mode; the same weights for the same ``seed``.

    ``image_resolution`` (a multiple of 32) overrides the 224-pixel input, for tests that make many views.

    The global RNG is left as it was, so building one inside a seeded run changes nothing else.
    """
    if kind not in TINY_SPECS:
        raise ValueError(f'tiny CLIP kind "{kind}" is not one of {", ".join(TINY_SPECS)}')
    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        spec = dict(TINY_SPECS[kind])
        if image_resolution is not None:
            spec["image_resolution"] = int(image_resolution)
        model = clip.model.CLIP(**spec)
        _spread_image_features(model)
    return model.eval()


@torch.no_grad()
def _spread_image_features(model: nn.Module) -> None:
    """Re-initialise the image encoder so different images get different features.

    With CLIP's own initialisation (meant for training from scratch), a random tiny image encoder maps
    every image to nearly the same direction (cosine > 0.99), so every image gets the same prediction.
    """
    visual = model.visual
    if hasattr(visual, "conv1") and hasattr(visual, "class_embedding"):  # VisionTransformer
        patch_fan_in = visual.conv1.weight[0].numel()
        nn.init.normal_(visual.conv1.weight, std=patch_fan_in**-0.5)  # patch embeddings of unit scale
        # Small class/position embeddings and sharper attention: the class token then reads the patches
        # instead of being dominated by its own fixed embedding.
        nn.init.normal_(visual.class_embedding, std=0.02)
        nn.init.normal_(visual.positional_embedding, std=0.02)
        width = visual.transformer.width
        for block in visual.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=2 * width**-0.5)
    else:  # ModifiedResNet
        # He initialisation keeps activations from shrinking through the stem and blocks, and a unit
        # (not zero) last BatchNorm scale lets every residual block contribute.
        for module in visual.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        for name, param in visual.named_parameters():
            if name.endswith("bn3.weight"):
                nn.init.ones_(param)


def save_tiny_clip(
    path: str | os.PathLike, kind: str = "vit", seed: int = 0, fmt: str = "state_dict", half: bool = True,
    image_resolution: int | None = None,
) -> Path:
    """Write :func:`build_tiny_clip` ``(kind, seed, image_resolution)`` to ``path`` as OpenAI ships CLIP;
    returns the path.

    ``fmt="state_dict"``: ``torch.save(model.state_dict())``; ``"torchscript"``: a traced archive (what
    ``torch.jit.load`` and TPT's ``clip.load`` need). ``half`` stores the weights clip keeps in fp16 as fp16
    (``convert_weights``), like OpenAI's files. The file appears complete or not at all.
    """
    if fmt not in FORMATS:
        raise ValueError(f'tiny CLIP format "{fmt}" is not one of {", ".join(FORMATS)}')
    clip = import_clip()
    model = build_tiny_clip(kind, seed, image_resolution)
    if half:
        clip.model.convert_weights(model)
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path) as temp_name:
        if fmt == "state_dict":
            torch.save(model.state_dict(), temp_name)
        else:
            _trace(model, clip).save(temp_name)
    return path


def _trace(model: nn.Module, clip) -> torch.jit.ScriptModule:
    resolution = model.visual.input_resolution
    image = torch.zeros(1, 3, resolution, resolution, dtype=model.dtype)
    text = clip.tokenize(["a photo of a dog."])
    with warnings.catch_warnings():
        # torch 2.13 deprecates jit tracing, and tracing attention code warns about shape-dependent
        # branches; the archive only serves as a container of the weights, so neither matters here.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(model, (image, text), check_trace=False)


# open_clip's family: a model config that ships with vlprompt (vlprompt/modeling/backbones/open_clip_configs).
TINY_OPEN_CLIP = "vlprompt-tiny-vit"


def build_tiny_open_clip(seed: int = 0, model_name: str = TINY_OPEN_CLIP) -> nn.Module:
    """A tiny random-weight ``open_clip.CLIP`` from a model config (no download), in eval mode; the same
    weights for the same ``seed``; the global RNG is left as it was."""
    from vlprompt.modeling.backbones.open_clip_family import create_architecture

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_architecture(model_name)
    return model.eval()


def save_tiny_open_clip(path: str | os.PathLike, seed: int = 0, model_name: str = TINY_OPEN_CLIP) -> Path:
    """Write a tiny open_clip model's state dict to ``path`` (for ``MODEL.BACKBONE.WEIGHTS``); returns the path."""
    path = Path(path).expanduser()
    atomic_save(build_tiny_open_clip(seed, model_name).state_dict(), path)
    return path
