"""The micro CLIP: OpenAI's CLIP code at toy size, pretrained on the toy world and shipped with vlprompt.

Its shape is chosen so everything written for the OpenAI models works unchanged: 224-pixel input, a
77-token context and the full 49408-token vocabulary, so clip's tokenizer, the CoOp/CoCoOp yamls and
``INPUT.SIZE (224, 224)`` all fit. The image tower is clip's ModifiedResNet at width 8 (one block per
stage): a ViT of similar cost learnt shapes and patterns several times more slowly from scratch on
2 CPU cores. Only the token rows of words that toy-world captions use are trained; the others are
zero, which keeps the committed file compressible.
``MODEL.BACKBONE.NAME micro-clip`` loads the bundled weights (see :mod:`vlprompt.clip_backbone`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from vlprompt.modeling.backbones.openai import bundled_path, import_clip
from vlprompt.toyworld.captions import caption_words

BUNDLED_NAME = "micro-clip"  # the MODEL.BACKBONE.NAME the OpenAI family resolves to the file below
WEIGHTS_PATH = bundled_path(BUNDLED_NAME)
METADATA_PATH = WEIGHTS_PATH.with_suffix(".json")  # how the weights were made (the script's record)

# clip.model.CLIP arguments. Heads must be what build_model infers from a state dict: text width // 64,
# and width * 32 // 64 for the ResNet's attention pool (what CLIP's constructor uses too).
MICRO_CLIP_SPEC: dict = {
    "embed_dim": 64,
    "image_resolution": 224,
    "vision_layers": (1, 1, 1, 1),
    "vision_width": 8,
    "vision_patch_size": None,
    "context_length": 77,
    "vocab_size": 49408,
    "transformer_width": 64,
    "transformer_heads": 1,
    "transformer_layers": 3,
}
# CLIP's image normalisation, as INPUT.PIXEL_MEAN / PIXEL_STD in every CoOp yaml.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


def caption_token_ids() -> list[int]:
    """Token ids the toy world's text can produce (caption words, start and end of text), sorted."""
    clip = import_clip()
    tokenizer = clip.clip._tokenizer
    ids = {tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]}
    for word in caption_words():
        ids.update(tokenizer.encode(word))
    return sorted(ids)


def build_micro_clip(seed: int = 0, spec: dict | None = None) -> nn.Module:
    """An untrained fp32 micro CLIP: clip's own initialisation, token rows outside the caption words zeroed.

    The zero rows get no gradient and no weight decay, so they stay zero through pretraining.
    """
    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = clip.model.CLIP(**(spec or MICRO_CLIP_SPEC))
    used = torch.zeros(model.token_embedding.weight.shape[0], dtype=torch.bool)
    used[caption_token_ids()] = True
    with torch.no_grad():
        model.token_embedding.weight[~used] = 0.0
    return model


@lru_cache(maxsize=4)
def _bicubic_matrix(source: int, target: int) -> torch.Tensor:
    """``(target, source)`` weights of PIL's bicubic resize along one axis (read off PIL itself)."""
    from PIL import Image

    columns = []
    for index in range(source):
        basis = np.zeros((1, source), dtype=np.float32)
        basis[0, index] = 1.0
        resized = Image.fromarray(basis, mode="F").resize((target, 1), Image.BICUBIC)
        columns.append(np.asarray(resized, dtype=np.float64)[0])
    return torch.from_numpy(np.stack(columns, axis=1)).float()


def resize_images(images: np.ndarray, resolution: int = 224) -> torch.Tensor:
    """Square uint8 images ``(B, H, W, 3)`` resized as the engine's test transform does (PIL bicubic),
    as a uint8 tensor ``(B, 3, R, R)``; equal to PIL but for rare one-level rounding differences, with
    two matrix products per batch instead of a PIL call per image."""
    weights = _bicubic_matrix(images.shape[1], resolution)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2)
    # PIL resamples horizontally into an 8-bit image, then vertically: round and clip after each pass.
    horizontal = (pixels @ weights.t()).add_(0.5).floor_().clamp_(0, 255)
    return (weights @ horizontal).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, R, R)`` → CLIP input: scaled to [0, 1] and normalised with CLIP's mean and std."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1) * 255.0
    return (images.float() - mean) / std


def images_to_tensor(images: np.ndarray, resolution: int = 224) -> torch.Tensor:
    """Square uint8 images ``(B, H, W, 3)`` as CLIP input ``(B, 3, R, R)`` (the test transform, batched)."""
    return normalize_images(resize_images(images, resolution))


def state_dict_fp16(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every floating tensor in fp16 (OpenAI's release format, half the bytes);
    ``build_model`` casts each back to its parameter's dtype when loading."""
    return {
        key: value.detach().to(torch.float16) if value.is_floating_point() else value.detach()
        for key, value in model.state_dict().items()
    }
