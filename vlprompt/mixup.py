"""Class-wise visual Mixup on frozen image features: the partners, the mixing weights and the loss.

A mixed sample is ``w * a + (1 - w) * b`` with ``w ~ Beta(alpha, alpha)`` and target ``(y_a, y_b, w)``
(cross-entropy ``w * CE(y_a) + (1 - w) * CE(y_b)``). The variants differ in where the partner comes from:

- same class (``same_class_partners``): another image of the sample's class, from the batch or, when
  the class appears once in it, from a :class:`ClassFeatureMemory` (the image encoder is frozen, so
  stored features stay valid); the target is the sample's class;
- another class (``cross_class_partners``): a class other than the sample's, drawn uniformly among the
  classes at hand (in the batch or the memory), then an image of it; mixed targets;
- any sample of the batch (``batch_permutation``): standard Mixup (Zhang et al. 2018), mixed targets;
- same class, in pixel space (``same_class_batch_partners``): partners from the batch only (the
  memory holds features, not images).

All draws come from the caller's ``torch.Generator``, never the global stream, so switching a
variant on or off leaves data order and image augmentation unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ClassFeatureMemory:
    """The last ``size`` image features seen per class, with the index of the image each came from
    (the image encoder is frozen, so stored features stay valid)."""

    def __init__(self, num_classes: int, size: int, dim: int, device: torch.device) -> None:
        self.features = torch.zeros(num_classes, size, dim, device=device)
        self.image_index = torch.full((num_classes, size), -1, dtype=torch.long, device=device)
        self.count = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.size = size

    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        indices = [-1] * len(labels) if indices is None else indices.tolist()
        for feature, label, index in zip(features.detach().float(), labels.tolist(), indices):
            slot = int(self.count[label]) % self.size
            self.features[label, slot] = feature
            self.image_index[label, slot] = index
            self.count[label] += 1

    def sample(self, label: int, generator: torch.Generator, exclude_index: int = -1) -> torch.Tensor | None:
        """A stored feature of class ``label`` from another image than ``exclude_index`` (uniformly among
        those kept), or None if there is none."""
        stored = min(int(self.count[label]), self.size)
        slots = [s for s in range(stored) if exclude_index < 0 or int(self.image_index[label, s]) != exclude_index]
        if not slots:
            return None
        return self.features[label, slots[int(torch.randint(len(slots), (1,), generator=generator))]]

    def stored_classes(self) -> list[int]:
        """The classes with at least one stored feature."""
        return torch.nonzero(self.count > 0).flatten().tolist()

    def state(self) -> dict:
        return {"features": self.features.cpu(), "image_index": self.image_index.cpu(), "count": self.count.cpu()}

    def load(self, state: dict) -> None:
        self.features.copy_(state["features"])
        self.image_index.copy_(state["image_index"])
        self.count.copy_(state["count"])


def _pick(candidates: list, generator: torch.Generator):
    return candidates[int(torch.randint(len(candidates), (1,), generator=generator))]


def beta_weights(n: int, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` mixing weights ~ Beta(alpha, alpha), drawn from ``generator`` (as two Gammas)."""
    gamma_a = torch._standard_gamma(torch.full((n,), float(alpha)), generator=generator)
    gamma_b = torch._standard_gamma(torch.full((n,), float(alpha)), generator=generator)
    return gamma_a / (gamma_a + gamma_b)


def same_class_partners(features: torch.Tensor, labels: torch.Tensor, memory: ClassFeatureMemory,
                        generator: torch.Generator, indices: torch.Tensor | None = None):
    """For each sample, another image's feature of its class: from the batch when the class appears
    twice, else from ``memory`` (never the same image); returns (partners, mask of samples that have one)."""
    partners = torch.zeros_like(features)
    has_partner = torch.zeros(len(labels), dtype=torch.bool, device=features.device)
    label_list = labels.tolist()
    for i, label in enumerate(label_list):
        same = [j for j, other in enumerate(label_list) if other == label and j != i]
        if same:
            partners[i] = features[_pick(same, generator)]
            has_partner[i] = True
        else:
            exclude = -1 if indices is None else int(indices[i])
            stored = memory.sample(label, generator, exclude_index=exclude)
            if stored is not None:
                partners[i] = stored.to(features.dtype)
                has_partner[i] = True
    return partners, has_partner


def cross_class_partners(features: torch.Tensor, labels: torch.Tensor, memory: ClassFeatureMemory,
                         generator: torch.Generator):
    """For each sample, the feature of an image of another class: the class is drawn uniformly among the
    other classes in the batch or the memory, the image from the batch when the class is there, else
    from the memory. Returns (partners, partner labels, mask of samples that have one)."""
    partners = torch.zeros_like(features)
    partner_labels = labels.clone()
    has_partner = torch.zeros(len(labels), dtype=torch.bool, device=features.device)
    label_list = labels.tolist()
    in_batch: dict[int, list[int]] = {}
    for j, label in enumerate(label_list):
        in_batch.setdefault(label, []).append(j)
    available = sorted(set(in_batch) | set(memory.stored_classes()))
    for i, label in enumerate(label_list):
        others = [c for c in available if c != label]
        if not others:
            continue
        partner_class = _pick(others, generator)
        if partner_class in in_batch:
            partners[i] = features[_pick(in_batch[partner_class], generator)]
        else:
            partners[i] = memory.sample(partner_class, generator).to(features.dtype)
        partner_labels[i] = partner_class
        has_partner[i] = True
    return partners, partner_labels, has_partner


def batch_permutation(n: int, generator: torch.Generator) -> torch.Tensor:
    """Standard Mixup's partners: a random permutation of the batch (a sample may meet itself)."""
    return torch.randperm(n, generator=generator)


def same_class_batch_partners(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each sample, the batch index of another sample of its class, or its own index when none."""
    partner_index = torch.arange(len(labels))
    label_list = labels.tolist()
    for i, label in enumerate(label_list):
        same = [j for j, other in enumerate(label_list) if other == label and j != i]
        if same:
            partner_index[i] = _pick(same, generator)
    return partner_index


def mix(first: torch.Tensor, second: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``w * first + (1 - w) * second`` with one weight per sample (any trailing shape)."""
    w = weights.reshape(-1, *([1] * (first.dim() - 1)))
    return w * first + (1 - w) * second


def mixed_target_loss(logits: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor,
                      weight_a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w * CE(y_a) + (1 - w) * CE(y_b)`` averaged over the samples that have a partner (0 when none has)."""
    if not mask.any():
        return logits.sum() * 0.0
    logits, label_a, label_b, weight_a = logits[mask], label_a[mask], label_b[mask], weight_a[mask]
    per_sample = weight_a * F.cross_entropy(logits, label_a, reduction="none")
    per_sample = per_sample + (1 - weight_a) * F.cross_entropy(logits, label_b, reduction="none")
    return per_sample.mean()
