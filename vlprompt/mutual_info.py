"""Mutual-information estimators on a batch of paired samples, and a small learnable critic.

Every estimator reads one score matrix ``S`` of shape ``(N, N)``: ``S[i, j] = T(x_i, y_j)`` for a
critic ``T``, the pairs ``(x_i, y_i)`` on the diagonal drawn from the joint distribution and the
off-diagonal pairs standing for the product of the marginals (the usual in-batch shuffle of MINE and
Deep InfoMax). Each returns a lower bound on a dependence measure, so training maximises it:

- ``infonce`` (van den Oord et al. 2018; symmetric, as CLIP's loss): ``I >= log N - InfoNCE``;
- ``dv`` (Donsker-Varadhan, the bound MINE maximises, Belghazi et al. 2018):
  ``I >= E_joint[T] - log E_marginal[exp T]``;
- ``jsd`` (the Jensen-Shannon estimator of f-GAN and Deep InfoMax, Hjelm et al. 2019):
  ``2 JS(joint || marginal) >= E_joint[-softplus(-T)] - E_marginal[softplus(T)] + log 4``;
  less tight than ``dv`` but with low-variance gradients.

:class:`PairCritic` is the learnable ``T``: a separable critic (one residual head per side, a cosine
and a learned scale) that starts as the fixed cosine critic ``cos(x, y) / tau``, so a learned
estimator begins where the parameter-free one is and moves away only where training takes it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MI_ESTIMATORS = ("infonce", "jsd", "dv")


def symmetric_infonce_loss(scores: torch.Tensor) -> torch.Tensor:
    """InfoNCE of a square score matrix in both directions (rows and columns), positives on the diagonal."""
    target = torch.arange(len(scores), device=scores.device)
    return 0.5 * (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target))


def view_infonce(soft: torch.Tensor, hand: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between two L2-normalised views ``(C, D)``, positives on the diagonal, with the
    fixed cosine critic at temperature ``tau``; ``log C - view_infonce(...)`` lower-bounds their MI (nats)."""
    return symmetric_infonce_loss(soft @ hand.t() / tau)


def _check_square(scores: torch.Tensor) -> int:
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or len(scores) < 2:
        raise ValueError(f"an MI estimate needs a square score matrix of at least 2 pairs (got {tuple(scores.shape)})")
    return len(scores)


def infonce_bound(scores: torch.Tensor) -> torch.Tensor:
    """``log N - symmetric InfoNCE``: a lower bound on I(X; Y) in nats, at most ``log N``."""
    return math.log(_check_square(scores)) - symmetric_infonce_loss(scores)


def _joint_and_marginal(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = _check_square(scores)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=scores.device)
    return scores.diagonal(), scores[off_diagonal]


def dv_bound(scores: torch.Tensor) -> torch.Tensor:
    """Donsker-Varadhan (MINE): ``mean(diag) - log mean(exp(off-diagonal))``, a lower bound on I(X; Y)."""
    joint, marginal = _joint_and_marginal(scores)
    return joint.mean() - (torch.logsumexp(marginal, dim=0) - math.log(len(marginal)))


def jsd_bound(scores: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon estimator: ``mean(-softplus(-diag)) - mean(softplus(off-diagonal)) + log 4``, a
    lower bound on twice the JS divergence between joint and marginals (in [0, log 4])."""
    joint, marginal = _joint_and_marginal(scores)
    return -F.softplus(-joint).mean() - F.softplus(marginal).mean() + math.log(4.0)


BOUNDS = {"infonce": infonce_bound, "jsd": jsd_bound, "dv": dv_bound}


def mi_bound(estimator: str, scores: torch.Tensor) -> torch.Tensor:
    """The lower bound ``estimator`` (one of :data:`MI_ESTIMATORS`) of the pairs scored in ``scores``."""
    if estimator not in BOUNDS:
        raise ValueError(f'MI estimator "{estimator}" is not one of {MI_ESTIMATORS}')
    return BOUNDS[estimator](scores)


class ResidualHead(nn.Module):
    """``x + W2 relu(W1 x)``, with ``W2`` zero at the start: the identity until training moves it."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(F.relu(self.inner(x)))


class PairCritic(nn.Module):
    """A learnable separable critic ``T(x, y) = exp(s) * cos(g(x), h(y))`` scoring every ``(x_i, y_j)``.

    ``g`` and ``h`` are residual MLP heads that start as the identity and ``exp(s)`` starts at
    ``1 / tau``, so at initialisation ``T`` is the fixed cosine critic. Separable, so scoring ``N``
    pairs against each other costs two head passes and one matrix product.
    """

    def __init__(self, dim_x: int, dim_y: int, hidden: int, tau: float) -> None:
        super().__init__()
        self.head_x = ResidualHead(dim_x, hidden)
        self.head_y = ResidualHead(dim_y, hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / tau)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores ``(len(x), len(y))``."""
        gx = F.normalize(self.head_x(x.float()), dim=-1)
        hy = F.normalize(self.head_y(y.float()), dim=-1)
        return self.log_scale.exp() * gx @ hy.t()


def cosine_scores(x: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """The fixed critic ``cos(x_i, y_j) / tau`` (no parameters)."""
    return F.normalize(x.float(), dim=-1) @ F.normalize(y.float(), dim=-1).t() / tau
