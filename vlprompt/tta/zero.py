"""Zero (Farina et al., NeurIPS 2024): the prediction of the confident views with the temperature taken to
zero, i.e. a vote of their arg-maxes. No gradient, no state.

As its code (``ttas/zero.py``, ``ttas/base.py``, ``utils/tools.py``): the views' unscaled cosine logits
``l``; entropies of ``softmax(l * logit_scale)`` computed as ``-(p * log p)`` (a probability that
underflows to 0 gives NaN, which sorts last); the ``gamma`` fraction with the lowest entropy is kept;
``softmax(l_kept / eps)`` (``eps`` the machine epsilon of ``l``'s dtype: fp16 under autocast, so a vote
is nearly rather than exactly one-hot there) summed over the kept views gives the votes; a tie is broken
by the first discarded view, in confidence order, whose arg-max is a tied class, and that class gets one
more vote. When no discarded view votes for a tied class, its code masks ``~ties`` (a bitwise NOT of class
indices, i.e. classes ``C - 1 - t``) in the first discarded view's logits and takes the arg-max; that is
matched too.
"""

from __future__ import annotations

import torch

from vlprompt.tta.objective import num_selected


def confidence_order(logits: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """View indices ``(N,)`` by increasing entropy of ``softmax(logits / (1 / logit_scale))`` (Zero's way)."""
    probs = (logits / (1 / logit_scale)).float().softmax(1)
    entropy = -(probs * probs.log()).sum(1)
    return torch.argsort(entropy, descending=False)


def break_tie(ties: list[int], discarded: torch.Tensor) -> int:
    """The class Zero adds a vote to among the tied ``ties`` (the first the vote's arg-max chose), from the
    discarded views' logits ``(M, C)`` in confidence order."""
    for pred in discarded.argmax(1).tolist():
        if pred in ties:
            return int(pred)
    logit = discarded[0].clone()
    logit[[~t for t in ties]] = -torch.inf  # Zero's code: ~ on class indices masks classes C-1-t
    return int(logit.argmax(-1))


def zero_votes(logits: torch.Tensor, logit_scale: torch.Tensor, gamma: float = 0.3) -> torch.Tensor:
    """Zero's vote counts ``(C,)`` (the prediction is their arg-max) from the unscaled cosine logits
    ``(N, C)`` of one image's views (in the dtype the reference computes them: fp16 under autocast)."""
    order = confidence_order(logits, logit_scale)
    k = num_selected(logits.shape[0], gamma)
    kept = logits[order[:k]]
    votes = (kept / torch.finfo(kept.dtype).eps).float().softmax(1).sum(0)
    best, pred = torch.max(votes, dim=-1)
    ties = [int(pred)] + [c for c in range(votes.shape[0]) if c != int(pred) and votes[c] == best]
    if len(ties) > 1:
        votes[break_tie(ties, logits[order][k:])] += 1
    return votes
