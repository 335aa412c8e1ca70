"""Scoring: CLIP's ``scale · normalised image @ normalised textᵀ`` (plus a logit bias where the model has
one), for one text classifier shared by all images, one per image (CoCoOp), or one per image and view (TPT)."""

from __future__ import annotations

import torch


def normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension (as CLIP does before scoring)."""
    return features / features.norm(dim=-1, keepdim=True)


def scaled_logits(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """``scale · image @ textᵀ`` (+ ``bias``) for normalised features; ``scale`` is already exponentiated.

    ``image`` ``(B, E)`` against ``text`` ``(C, E)`` gives ``(B, C)``; against ``(B, C, E)`` (a classifier
    per image) ``(B, C)``; ``image`` ``(B, V, E)`` against ``(B, C, E)`` gives ``(B, V, C)``.
    """
    if text_features.dim() == 2:
        logits = scale * image_features @ text_features.t()
    elif image_features.dim() == 2:
        logits = scale * torch.einsum("bd,bcd->bc", image_features, text_features)
    else:
        logits = scale * torch.einsum("bve,bce->bvc", image_features, text_features)
    return logits if bias is None else logits + bias


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`scaled_logits` with CLIP's learned ``logit_scale`` (log space, as stored in the model)."""
    return scaled_logits(image_features, text_features, logit_scale.exp(), logit_bias)
