"""TPT's objective: confidence selection of views and the entropy of their averaged prediction; C-TPT's
text-feature dispersion term."""

from __future__ import annotations

import math

import torch


def num_selected(n_views: int, selection_p: float) -> int:
    """How many views are kept: ``int(n_views * p)`` as the reference (6 of 64), at least one (the reference
    would average over no view, a NaN loss, when ``n_views * p < 1``)."""
    return max(1, int(n_views * selection_p))


def view_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each view's softmax prediction: ``(..., N, C)`` → ``(..., N)``."""
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def select_confident(logits: torch.Tensor, selection_p: float) -> torch.Tensor:
    """Indices ``(..., k)`` of the ``k`` views with the lowest prediction entropy, most confident first
    (ties keep the lower view index)."""
    k = num_selected(logits.shape[-2], selection_p)
    order = torch.argsort(view_entropy(logits), dim=-1, stable=True)
    return order[..., :k]


def marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean of the views' softmax predictions, ``(..., N, C)`` → ``(...)``.

    Averaged in log space (logsumexp over views minus log N) so tiny probabilities do not underflow;
    log-probabilities are clamped to the dtype's smallest finite value so a zero probability gives 0·(−big)
    rather than 0·(−inf) = NaN.
    """
    log_p = logits.float().log_softmax(-1)
    log_mean = torch.logsumexp(log_p, dim=-2) - math.log(logits.shape[-2])
    log_mean = log_mean.clamp(min=torch.finfo(log_mean.dtype).min)
    return -(log_mean.exp() * log_mean).sum(-1)


def text_dispersion(text: torch.Tensor) -> torch.Tensor:
    """C-TPT's average text feature dispersion (ATFD) of normalised class text features ``(..., C, E)``:
    the mean over classes of the L2 distance to their centroid, ``(...)``."""
    return torch.linalg.norm(text - text.mean(-2, keepdim=True), dim=-1).mean(-1)


def calibrated_entropy(weight: float):
    """C-TPT's per-image loss: TPT's entropy of the averaged prediction minus ``weight`` (its lambda) times
    the dispersion of the class text features, ``(chosen logits (B, k, C), text (B, C, E)) -> (B,)``."""

    def objective(chosen: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return marginal_entropy(chosen) - weight * text_dispersion(text.float())

    return objective
