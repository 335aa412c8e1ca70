"""Expected calibration error (ECE) of test-time predictions, computed as C-TPT's code does.

C-TPT (Yoon et al., ICLR 2024; ``tpt_classification.py``, ``ECE_Loss``) splits [0, 1] into equal-width bins
(boundaries from ``torch.linspace`` in float32), puts a prediction in the bin with ``lower < confidence
<= upper`` (so a confidence of exactly 0 is in no bin, yet counts in N), and sums ``|accuracy_b -
confidence_b| * n_b / N``. The bin count is each test-time method's ``ECE_BINS`` key: 15 by default, the
count calibration papers report ECE with (Guo et al., 2017); C-TPT's own code calls ``ECE_Loss(20, ...)``
(``ECE_BINS 20`` reproduces its numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_ECE_BINS = 15  # the calibration literature's count; C-TPT's code uses 20


def bin_boundaries(n_bins: int) -> list[tuple[float, float]]:
    """(lower, upper) of each bin, the float32 values of ``torch.linspace(0, 1, n_bins + 1)`` as C-TPT."""
    edges = torch.linspace(0, 1, n_bins + 1)
    return [(float(lo), float(hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def calibration_bins(confidences: Sequence[float], correct: Sequence[bool],
                     n_bins: int = DEFAULT_ECE_BINS) -> list[tuple[int, float, float]]:
    """Per bin: (number of predictions, their accuracy, their mean confidence); zeros for an empty bin."""
    if n_bins < 1:
        raise ValueError(f"ECE needs at least one bin, got {n_bins}")
    bins = bin_boundaries(n_bins)
    count = [0] * n_bins
    hits = [0.0] * n_bins
    conf_sum = [0.0] * n_bins
    for confidence, right in zip(confidences, correct):
        for b, (lower, upper) in enumerate(bins):
            if lower < confidence <= upper:
                count[b] += 1
                hits[b] += float(right)
                conf_sum[b] += float(confidence)
                break
    return [(n, hits[b] / n if n else 0.0, conf_sum[b] / n if n else 0.0) for b, n in enumerate(count)]


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool],
                               n_bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE in percent over all predictions (C-TPT prints it x100); 0 for no prediction."""
    total = len(confidences)
    if total == 0:
        return 0.0
    ece = 0.0
    for n, accuracy, confidence in calibration_bins(confidences, correct, n_bins):
        ece += abs(accuracy - confidence) * n / total
    return 100.0 * ece
