"""Batch metrics printed in training log lines."""

from __future__ import annotations

import torch


def compute_accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Top-k accuracy in percent for each k, as Dassl's ``compute_accuracy``."""
    maxk = max(topk)
    pred = output.topk(maxk, dim=1, largest=True, sorted=True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    batch_size = target.size(0)
    return [correct[:k].reshape(-1).float().sum() * (100.0 / batch_size) for k in topk]
