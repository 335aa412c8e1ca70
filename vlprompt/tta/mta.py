"""MTA (Zanella & Ben Ayed, CVPR 2024): MeanShift over the views' embeddings, with an inlierness score per
view, and the mode's zero-shot prediction. No prompt tuning, no gradient, no state.

As its code (``mta.py``): a Gaussian kernel per view with bandwidth ``h_i = sqrt(mean of the squared
distances to its k nearest other views / 2)``, ``k = int(0.3 (N - 1))``; an affinity ``A = P P^T`` of the
views' softmax predictions (temperature 1); inlierness ``y`` starts uniform and the mode at the original
view; 5 outer iterations of (up to 5 updates ``y = softmax((K(mode) + lambda_q A y) / lambda_y)``, then
up to 5 weighted mean-shift steps of the mode, renormalised), each inner loop stopping early when its
variable moves by less than 1e-6; the output is ``logit_scale * mode . t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEIGHBOUR_FRACTION = 0.3
ITERATIONS = 5
TOLERANCE = 1e-6


def gaussian_kernel(mode: torch.Tensor, bandwidth: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``exp(-||x_i - mode||^2 / (2 h_i^2))`` for each point ``(N,)``."""
    distance = torch.norm(points - mode, dim=-1, p=2)
    return torch.exp(-(distance**2) / (2 * bandwidth**2))


def bandwidths(points: torch.Tensor) -> torch.Tensor:
    """Each point's bandwidth from its ``int(0.3 (N - 1))`` nearest other points."""
    distances, _ = torch.sort(torch.cdist(points, points), dim=1)
    k = int(NEIGHBOUR_FRACTION * (points.shape[0] - 1))
    return torch.sqrt(0.5 * torch.mean(distances[:, 1 : k + 1] ** 2, dim=1))


def mta_logits(features: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, lambda_y: float = 0.2,
               lambda_q: float = 4.0) -> torch.Tensor:
    """MTA's logits ``(C,)`` of one image from its views' normalised features ``(N, E)`` (view 0 the
    original) and the normalised class text features ``(C, E)``."""
    n = features.shape[0]
    bandwidth = bandwidths(features)
    probs = (features @ text.t() * logit_scale).softmax(1)
    affinity = probs @ probs.t()
    inlierness = torch.ones(n, device=features.device, dtype=features.dtype) / n
    mode = features[0]
    for _ in range(ITERATIONS):
        density = gaussian_kernel(mode, bandwidth, features)
        for _ in range(ITERATIONS):
            previous = inlierness
            quadratic = torch.sum(affinity * inlierness.unsqueeze(0), dim=1)
            inlierness = F.softmax(1 / lambda_y * (density + lambda_q * quadratic), dim=-1)
            if torch.norm(previous - inlierness) < TOLERANCE:
                break
        for _ in range(ITERATIONS):
            previous = mode
            weights = gaussian_kernel(mode, bandwidth, features) * inlierness
            mode = torch.sum(weights.unsqueeze(1) * features, dim=0) / torch.sum(weights)
            mode = mode / mode.norm(p=2, dim=-1)
            if torch.norm(previous - mode) < TOLERANCE:
                break
    return (mode.unsqueeze(0) @ text.t() * logit_scale)[0]
