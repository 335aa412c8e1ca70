"""MTA (Zanella & Ben Ayed, CVPR 2024): MeanShift test-time augmentation, no prompt learning.

Per test image: N views (the original + random resized crops and flips; its code turns AugMix off under
``--mta``), their normalised embeddings, and the mode that a MeanShift weighted by per-view inlierness
scores finds (inlierness rewards views in dense regions whose predictions agree with the others'); the
prediction is the mode's zero-shot prediction with the untuned prompt. No optimisation and no text
backward.

The solver is :mod:`vlprompt.tta.mta`; views, per-image loop, resume and shards are the harness's.
"""

from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.modeling import normalize
from vlprompt.tta.harness import add_test_time_keys
from vlprompt.tta.mta import mta_logits
from vlprompt.tta.text import FixedTextMethod, add_class_text_keys


@register_cfg_extension
def add_mta_keys(cfg) -> None:
    """``TRAINER.MTA.*`` with MTA's defaults (64 crop-and-flip views, lambda_y 0.2, lambda_q 4)."""
    cfg.TRAINER.MTA = CN()
    add_test_time_keys(cfg.TRAINER.MTA, aug="crop")
    add_class_text_keys(cfg.TRAINER.MTA)
    cfg.TRAINER.MTA.LAMBDA_Y = 0.2  # entropic term of the inlierness update
    cfg.TRAINER.MTA.LAMBDA_Q = 4.0  # weight of the prediction affinity in the inlierness update


@TRAINER_REGISTRY.register()
class MTA(FixedTextMethod):
    """MeanShift over the views' embeddings on every dataset in TRAINER.MTA.TEST_SETS (or DATASET.NAME)."""

    cfg_node = "MTA"

    def method_problems(self, node) -> list[str]:
        problems = super().method_problems(node)
        if node.LAMBDA_Y <= 0:
            problems.append(f"LAMBDA_Y is {node.LAMBDA_Y}; use a positive number")
        return problems

    def start_set(self, classnames: list[str]):
        return self.class_texts(classnames)

    @torch.no_grad()
    def adapt(self, texts, features: torch.Tensor) -> torch.Tensor:
        node = self.method_cfg
        text = texts(features[:, 0])
        views = normalize(features)
        return torch.stack([mta_logits(views[b], text[b], self.logit_scale, node.LAMBDA_Y, node.LAMBDA_Q)
                            for b in range(views.shape[0])])

    def method_detail(self) -> dict:
        node = self.method_cfg
        return {**super().method_detail(), "lambda_y": node.LAMBDA_Y, "lambda_q": node.LAMBDA_Q}
