"""TDA (Karmanov et al., CVPR 2024): training-free test-time adaptation with a positive and a negative cache
of test features, built online over the test stream (so results depend on the order of the images).

As its code (``tda_runner.py``, ``utils.py``), per test image:

* **Its summary** (:func:`stream_item`). With several views: the ``int(0.1 N)`` of lowest entropy are kept;
  the feature is the mean of their normalised features (not renormalised), the entropy that of their
  averaged prediction, the probability map their mean softmax, the pseudo-label the arg-max of their mean
  logits. With one view: its feature, entropy, softmax and arg-max. Logits are ``100 f . W`` (a fixed
  scale, ``LOGIT_SCALE``).
* **The caches**, updated *before* predicting, so an image counts for itself. Positive (``shot`` 3 per
  class): [feature, entropy] always goes under the pseudo-label; a full class replaces its worst entry when
  the new entropy is lower; kept sorted by entropy. Negative (2 per class): [feature, entropy, probability
  map] only when the normalised entropy ``H / log2(C)`` (``H`` in nats: TDA's mixed units) lies strictly in
  ``(0.2, 0.5)``.
* **Its logits** = CLIP's + ``alpha_p exp(-beta_p (1 - f K_p^T)) onehot(V_p)`` - ``alpha_n exp(-beta_n
  (1 - f K_n^T)) M``, ``M`` marking the classes whose cached probability lies strictly in ``(0.03, 1)``.

Each image's summary is logged with its prediction (:meth:`StreamItem.to_row`), so a resumed run rebuilds
the caches exactly (:meth:`TDACaches.replay`) and the shards of a run can be replayed as one stream
(:func:`replay_rows`). The CLIP logits are computed from the summary's feature (``100 f . W``, the same
number as TDA's mean of the kept views' logits up to float rounding) so that a replay gives the same bits.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from vlprompt.tta.objective import marginal_entropy, select_confident, view_entropy


@dataclass(frozen=True)
class TDASettings:
    """TDA's hyper-parameters; the defaults are its ImageNet config (positive alpha/beta vary by dataset)."""

    pos_shots: int = 3
    pos_alpha: float = 2.0
    pos_beta: float = 5.0
    neg_shots: int = 2
    neg_alpha: float = 0.117
    neg_beta: float = 1.0
    entropy_window: tuple[float, float] = (0.2, 0.5)
    mask_window: tuple[float, float] = (0.03, 1.0)
    logit_scale: float = 100.0
    selection_p: float = 0.1

    def as_dict(self) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TDASettings:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass
class StreamItem:
    """What one test image brings to the stream: ``feature`` ``(E,)``, ``entropy`` (nats), its
    ``pseudo_label`` and ``prob_map`` ``(C,)``."""

    feature: torch.Tensor
    entropy: float
    pseudo_label: int
    prob_map: torch.Tensor

    def to_row(self, mask_low: float) -> dict:
        """The log form: the float32 feature in base64, and only the probabilities above ``mask_low`` (the
        others can never be in the negative mask)."""
        feature = self.feature.detach().float().cpu().contiguous().numpy().astype("<f4")
        probs = self.prob_map.detach().float().cpu()
        sparse = {str(c): float(probs[c]) for c in torch.nonzero(probs > mask_low).flatten().tolist()}
        return {"f": base64.b64encode(feature.tobytes()).decode("ascii"), "h": self.entropy,
                "pl": self.pseudo_label, "pm": sparse}

    @classmethod
    def from_row(cls, row: dict, n_classes: int, device: torch.device | str = "cpu") -> StreamItem:
        feature = torch.from_numpy(np.frombuffer(base64.b64decode(row["f"]), dtype="<f4").copy()).to(device)
        probs = torch.zeros(n_classes, device=device)
        for c, p in row["pm"].items():
            probs[int(c)] = p
        return cls(feature, float(row["h"]), int(row["pl"]), probs)


def encode_matrix(matrix: torch.Tensor) -> dict:
    """A float32 matrix in a log header (base64)."""
    array = matrix.detach().float().cpu().contiguous().numpy().astype("<f4")
    return {"shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_matrix(encoded: dict) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<f4").copy()
    return torch.from_numpy(array).view(*encoded["shape"])


def stream_item(features: torch.Tensor, classifier: torch.Tensor, settings: TDASettings) -> StreamItem:
    """One image's summary from its views' normalised features ``(N, E)`` and the normalised class text
    features ``classifier`` ``(C, E)``."""
    logits = settings.logit_scale * features @ classifier.t()
    if features.shape[0] > 1:
        kept = select_confident(logits, settings.selection_p)
        chosen = logits[kept]
        return StreamItem(features[kept].mean(0), float(marginal_entropy(chosen)),
                          int(chosen.mean(0).argmax()), chosen.softmax(1).mean(0))
    return StreamItem(features[0], float(view_entropy(logits)[0]), int(logits[0].argmax()), logits[0].softmax(0))


class TDACaches:
    """TDA's positive and negative caches over one dataset's stream, with the class text features."""

    def __init__(self, classifier: torch.Tensor, settings: TDASettings) -> None:
        self.classifier = classifier
        self.settings = settings
        self.n_classes = classifier.shape[0]
        self.positive: dict[int, list[tuple]] = {}
        self.negative: dict[int, list[tuple]] = {}

    @staticmethod
    def _insert(cache: dict[int, list[tuple]], label: int, entry: tuple, shots: int) -> None:
        entries = cache.setdefault(label, [])
        if len(entries) < shots:
            entries.append(entry)
        elif entry[1] < entries[-1][1]:
            entries[-1] = entry
        cache[label] = sorted(entries, key=lambda e: e[1])

    def normalized_entropy(self, entropy: float) -> float:
        """``H / log2(C)`` in float32, as TDA divides its float32 loss."""
        return float(torch.tensor(entropy, dtype=torch.float32) / math.log2(self.n_classes))

    def add(self, item: StreamItem) -> None:
        """File the image in the caches (TDA does this before predicting it)."""
        s = self.settings
        self._insert(self.positive, item.pseudo_label, (item.feature, item.entropy), s.pos_shots)
        if s.entropy_window[0] < self.normalized_entropy(item.entropy) < s.entropy_window[1]:
            self._insert(self.negative, item.pseudo_label, (item.feature, item.entropy, item.prob_map), s.neg_shots)

    def _cache_logits(self, feature: torch.Tensor, cache: dict[int, list[tuple]], alpha: float, beta: float,
                      negative: bool) -> torch.Tensor:
        keys, values = [], []
        for label in sorted(cache):
            for entry in cache[label]:
                keys.append(entry[0])
                if negative:
                    low, high = self.settings.mask_window
                    values.append(((entry[2] > low) & (entry[2] < high)).float())
                else:
                    values.append(torch.nn.functional.one_hot(torch.tensor(label), self.n_classes).float())
        keys_t = torch.stack(keys).to(feature)
        values_t = torch.stack(values).to(feature)
        affinity = feature[None] @ keys_t.t()
        return alpha * (((-1) * (beta - beta * affinity)).exp() @ values_t)[0]

    def logits(self, item: StreamItem) -> torch.Tensor:
        """The image's final logits ``(C,)`` from the caches as they are."""
        s = self.settings
        feature = item.feature
        logits = s.logit_scale * feature[None] @ self.classifier.t().to(feature)
        logits = logits[0]
        if self.positive:
            logits = logits + self._cache_logits(feature, self.positive, s.pos_alpha, s.pos_beta, negative=False)
        if self.negative:
            logits = logits - self._cache_logits(feature, self.negative, s.neg_alpha, s.neg_beta, negative=True)
        return logits

    def step(self, item: StreamItem) -> torch.Tensor:
        """Add the image, then predict it (TDA's order)."""
        self.add(item)
        return self.logits(item)

    def replay(self, rows: Sequence[dict], device: torch.device | str = "cpu") -> None:
        """Rebuild the caches from logged rows (in stream order), as a killed run had them."""
        for row in rows:
            self.add(StreamItem.from_row(row["tda"], self.n_classes, device))


def stream_permutation(num_items: int, seed: int) -> list[int]:
    """The order TDA sees a dataset's images in: a permutation drawn from (seed, 0x7DA) (TDA itself
    shuffles its loader with torch's seed 1)."""
    return np.random.default_rng([int(seed), 0x7DA]).permutation(num_items).tolist()


def replay_rows(header: dict, rows: Sequence[dict]) -> list[dict]:
    """The rows of one unsharded run from the merged rows of its shards: the stream replayed in its order
    with one pair of caches, each image's top-5 and confidence recomputed from its logged summary."""
    from vlprompt.tta.records import prediction_row

    stream = header["stream"]
    classifier = decode_matrix(stream["classifier"])
    caches = TDACaches(classifier, TDASettings.from_dict(stream["settings"]))
    position = {index: t for t, index in enumerate(stream["permutation"])}
    replayed = []
    for row in sorted(rows, key=lambda r: position[int(r["i"])]):
        logits = caches.step(StreamItem.from_row(row["tda"], caches.n_classes))
        fresh = prediction_row(row["i"], row["y"], logits, logits.softmax(-1), row.get("img"), {"tda": row["tda"]})
        replayed.append(fresh)
    return sorted(replayed, key=lambda r: r["i"])
