"""Zero (Farina et al., NeurIPS 2024): test-time adaptation with the temperature taken to zero.

Per test image: N views (the original + random resized crops and flips; no AugMix on any dataset), the
GAMMA fraction with the lowest prediction entropy kept, and the prediction is the vote of their arg-maxes
(the softmax at zero temperature), ties broken by the most confident discarded view. No optimisation and
no text backward: about one image-encoder pass per view. Class texts: "a photo of a" (or any prompt start)
or, with ``TEMPLATES tip7``, its "+Ensemble" (the 7 Tip-Adapter templates). The confidence is the
winner's share of the votes.

The algorithm is :mod:`vlprompt.tta.zero`; views, per-image loop, resume and shards are the harness's.
"""

from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.modeling import normalize
from vlprompt.tta.harness import Adapted, add_test_time_keys
from vlprompt.tta.text import FixedTextMethod, add_class_text_keys
from vlprompt.tta.zero import zero_votes


@register_cfg_extension
def add_zero_keys(cfg) -> None:
    """``TRAINER.ZERO.*`` with Zero's defaults (64 crop-and-flip views, gamma 0.3, "a photo of a")."""
    cfg.TRAINER.ZERO = CN()
    add_test_time_keys(cfg.TRAINER.ZERO, aug="crop")
    add_class_text_keys(cfg.TRAINER.ZERO)
    cfg.TRAINER.ZERO.GAMMA = 0.3  # fraction of views that vote (hard-coded in its code)


@TRAINER_REGISTRY.register()
class Zero(FixedTextMethod):
    """Zero-temperature voting of confident views on every dataset in TRAINER.ZERO.TEST_SETS."""

    cfg_node = "ZERO"

    def method_problems(self, node) -> list[str]:
        problems = super().method_problems(node)
        if not 0 < node.GAMMA <= 1:
            problems.append(f"GAMMA is {node.GAMMA}; use a fraction in (0, 1]")
        return problems

    def start_set(self, classnames: list[str]):
        return self.class_texts(classnames)

    @torch.no_grad()
    def adapt(self, texts, features: torch.Tensor) -> Adapted:
        text = texts(features[:, 0])
        # Under amp the reference's logits are fp16 (its vote then is not exactly one-hot); fp32 otherwise.
        dtype = torch.float16 if self.amp else torch.float32
        logits = normalize(features).to(dtype) @ text.to(dtype).transpose(1, 2)
        votes = torch.stack([zero_votes(l, self.logit_scale, self.method_cfg.GAMMA) for l in logits])
        return Adapted(votes, probs=votes / votes.sum(-1, keepdim=True))

    def method_detail(self) -> dict:
        return {**super().method_detail(), "gamma": self.method_cfg.GAMMA}
