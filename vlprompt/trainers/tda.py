"""TDA (Karmanov et al., CVPR 2024): training-free dynamic adapter, a positive and a negative cache of test
features built online over the test stream.

Per test image, in the stream's order: its summary (on ImageNet's distribution shifts the mean of the
10% most confident of N AugMix views; elsewhere the original view alone), filed in the positive cache
under its pseudo-label (3 per class, lowest entropy kept) and, when its normalised entropy is in (0.2, 0.5),
in the negative cache (2 per class); then its logits are CLIP's plus the positive cache's vote minus the
negative cache's. Class texts: TDA's template ensembles per dataset (``TEMPLATES tda``), or any prompt
start with ``TEMPLATES ""``. Positive alpha/beta are per dataset (``POS_PER_DATASET``, TDA's configs).

TDA is order-dependent: the stream is a permutation of the test set drawn from the run's seed and recorded
in each prediction log; every image's summary is logged with its prediction, so a killed run rebuilds its
caches and resumes identical, and ``python -m vlprompt.tta.merge`` replays the shards of a run as one
stream (each shard alone sees only its part of the stream).
"""

from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.errors import UserValueError
from vlprompt.modeling import normalize
from vlprompt.tta.harness import Adapted, add_test_time_keys
from vlprompt.tta.tda import TDACaches, TDASettings, encode_matrix, stream_item, stream_permutation
from vlprompt.tta.text import FixedTextMethod, add_class_text_keys
from vlprompt.tta.views import DISTRIBUTION_SHIFTS, resolve_aug

# TDA's configs/*.yaml: positive cache alpha and beta per dataset (shot capacity 3 and the negative cache's
# settings are the same everywhere).
POSITIVE_ALPHA_BETA = {
    "ImageNet": [2.0, 5.0], "ImageNetA": [2.0, 5.0], "ImageNetV2": [1.0, 8.0], "ImageNetR": [1.0, 8.0],
    "ImageNetSketch": [2.363, 7.45], "Caltech101": [5.0, 5.0], "DescribableTextures": [2.0, 3.0],
    "EuroSAT": [4.0, 8.0], "FGVCAircraft": [2.0, 2.0], "Food101": [1.0, 1.0], "OxfordFlowers": [1.0, 5.0],
    "OxfordPets": [2.0, 7.0], "StanfordCars": [1.0, 7.0], "SUN397": [2.0, 3.0], "UCF101": [3.0, 8.0],
}


@register_cfg_extension
def add_tda_keys(cfg) -> None:
    """``TRAINER.TDA.*`` with TDA's configs."""
    cfg.TRAINER.TDA = CN()
    node = cfg.TRAINER.TDA
    add_test_time_keys(node, aug="auto")  # auto: N_VIEWS AugMix views on distribution shifts, else the original
    add_class_text_keys(node, templates="tda")
    node.POS_SHOTS = 3
    node.POS_ALPHA = 2.0  # positive cache weight and sharpness on datasets POS_PER_DATASET does not list
    node.POS_BETA = 5.0
    node.POS_PER_DATASET = CN(POSITIVE_ALPHA_BETA, new_allowed=True)  # dataset: [alpha, beta]
    node.NEG_SHOTS = 2
    node.NEG_ALPHA = 0.117
    node.NEG_BETA = 1.0
    node.NEG_ENTROPY = (0.2, 0.5)  # normalised entropy window for the negative cache (exclusive)
    node.NEG_MASK = (0.03, 1.0)  # probabilities marking a negative class (exclusive)
    node.LOGIT_SCALE = 100.0  # TDA's fixed CLIP logit scale (0: the model's own)
    node.SELECTION_P = 0.1  # fraction of views kept on the distribution shifts


@TRAINER_REGISTRY.register()
class TDA(FixedTextMethod):
    """TDA's caches over the test stream of every dataset in TRAINER.TDA.TEST_SETS (or DATASET.NAME)."""

    cfg_node = "TDA"

    def method_problems(self, node) -> list[str]:
        problems = super().method_problems(node)
        if node.POS_SHOTS < 1 or node.NEG_SHOTS < 1:
            problems.append(f"POS_SHOTS and NEG_SHOTS are {node.POS_SHOTS} and {node.NEG_SHOTS}; use >= 1")
        for key in ("NEG_ENTROPY", "NEG_MASK"):
            if len(node[key]) != 2 or node[key][0] >= node[key][1]:
                problems.append(f"{key} is {list(node[key])}; use [lower, upper] with lower < upper")
        for name, value in node.POS_PER_DATASET.items():
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                problems.append(f"POS_PER_DATASET.{name} is {value!r}; use [alpha, beta]")
        if not 0 < node.SELECTION_P <= 1:
            problems.append(f"SELECTION_P is {node.SELECTION_P}; use a fraction in (0, 1]")
        return problems

    def settings(self, set_name: str) -> TDASettings:
        node = self.method_cfg
        dataset = self.set_names[set_name]
        alpha, beta = node.POS_PER_DATASET.get(dataset, [node.POS_ALPHA, node.POS_BETA])
        scale = node.LOGIT_SCALE or float(self.logit_scale)
        return TDASettings(
            pos_shots=node.POS_SHOTS, pos_alpha=float(alpha), pos_beta=float(beta), neg_shots=node.NEG_SHOTS,
            neg_alpha=node.NEG_ALPHA, neg_beta=node.NEG_BETA, entropy_window=tuple(node.NEG_ENTROPY),
            mask_window=tuple(node.NEG_MASK), logit_scale=float(scale), selection_p=node.SELECTION_P,
        )

    def view_settings(self, set_name: str) -> tuple[int, str]:
        node = self.method_cfg
        dataset = self.set_names[set_name]
        if node.AUG == "auto":
            return (node.N_VIEWS, "augmix") if dataset in DISTRIBUTION_SHIFTS else (1, "crop")
        return node.N_VIEWS, resolve_aug(node.AUG, dataset)

    def stream_order(self, set_name: str, indices: list[int]) -> list[int]:
        position = {index: t for t, index in enumerate(stream_permutation(self.current_size, self.seed))}
        return sorted(indices, key=position.__getitem__)

    def start_set(self, classnames: list[str]) -> TDACaches:
        texts = self.class_texts(classnames)
        if not texts.shared:
            raise UserValueError(f"TDA caches features against one classifier per dataset; the prompt start "
                                 f"({self.context.describe()}) makes one per image. Start from words or a CoOp "
                                 "context, or set TRAINER.TDA.TEMPLATES")
        return TDACaches(texts.fixed.to(self.device), self.settings(self.current_set))

    def method_header(self, caches: TDACaches) -> dict:
        return {"stream": {"order": "numpy default_rng([seed, 0x7DA]).permutation(num_items)",
                           "permutation": stream_permutation(self.current_size, self.seed),
                           "settings": caches.settings.as_dict(), "classifier": encode_matrix(caches.classifier)}}

    def resume_set(self, caches: TDACaches, rows: list[dict]) -> None:
        caches.replay(rows, self.device)

    @torch.no_grad()
    def adapt(self, caches: TDACaches, features: torch.Tensor) -> Adapted:
        settings = caches.settings
        views = normalize(features)
        logits, extras = [], []
        for b in range(views.shape[0]):  # in stream order
            item = stream_item(views[b], caches.classifier, settings)
            logits.append(caches.step(item))
            extras.append({"tda": item.to_row(settings.mask_window[0])})
        logits = torch.stack(logits)
        return Adapted(logits, probs=logits.softmax(-1), extras=extras)

    def method_detail(self) -> dict:
        node = self.method_cfg
        keys = ("POS_SHOTS", "POS_ALPHA", "POS_BETA", "NEG_SHOTS", "NEG_ALPHA", "NEG_BETA", "LOGIT_SCALE",
                "SELECTION_P")
        detail = {key.lower(): node[key] for key in keys}
        detail.update(neg_entropy=list(node.NEG_ENTROPY), neg_mask=list(node.NEG_MASK),
                      pos_per_dataset={k: list(v) for k, v in sorted(node.POS_PER_DATASET.items())})
        return {**super().method_detail(), **detail}
