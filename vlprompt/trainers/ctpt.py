"""C-TPT (Yoon et al., ICLR 2024): calibrated test-time prompt tuning.

TPT with one more term in the loss: per test image, the entropy of the confident views' averaged
prediction minus LAMBDA times the average text feature dispersion (ATFD: the mean distance of the
normalised class text features to their centroid), one AdamW step, then the original view is predicted.
Spreading the class text features apart lowers the overconfidence TPT's entropy minimisation brings, and
so the expected calibration error (reported for every test-time method).

Defaults are C-TPT's scripts: LAMBDA 50 (its fine-grained script, also used for ImageNet), 20 on the
distribution shifts (LAMBDA_SHIFTS, its shift script); views ``AUG auto``: crops for ImageNet itself and
AugMix for everything else, ImageNet's shifts included (its shift script passes ``--I_augmix``).
TEMPERATURE divides the logits for the confidence only (with LAMBDA 0 and 1.16 for ViT-B/16 / 1.15 for RN50
it is the code's ``tpt_ts`` run type, TPT with a fixed temperature).

The prompt start, tuner, views, per-image loop, resume and shards are TPT's (:mod:`vlprompt.tta`).
"""

from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.tta.harness import Adapted, add_test_time_keys
from vlprompt.tta.objective import calibrated_entropy
from vlprompt.tta.prompt_tuning import PromptTuningMethod, add_prompt_start_keys, add_prompt_tuning_keys
from vlprompt.tta.views import DISTRIBUTION_SHIFTS, resolve_aug

# ImageNet itself (and the toy world's photo domain that mirrors it) gets crops under AUG auto.
SOURCE_SETS = ("ImageNet", "I", "ToyWorld")


@register_cfg_extension
def add_ctpt_keys(cfg) -> None:
    """``TRAINER.CTPT.*``: TPT's keys and C-TPT's defaults."""
    cfg.TRAINER.CTPT = CN()
    add_test_time_keys(cfg.TRAINER.CTPT)
    add_prompt_tuning_keys(cfg.TRAINER.CTPT)
    add_prompt_start_keys(cfg.TRAINER.CTPT)
    cfg.TRAINER.CTPT.LAMBDA = 50.0  # weight of the text feature dispersion (--lambda_term of the fine-grained script)
    cfg.TRAINER.CTPT.LAMBDA_SHIFTS = 20.0  # the same on the distribution shifts (its shift script)
    cfg.TRAINER.CTPT.TEMPERATURE = 1.0  # divides the logits for the confidence (tpt_ts: 1.16 ViT, 1.15 RN)


@TRAINER_REGISTRY.register()
class CTPT(PromptTuningMethod):
    """Calibrated test-time prompt tuning on every dataset in TRAINER.CTPT.TEST_SETS (or DATASET.NAME)."""

    cfg_node = "CTPT"

    def method_problems(self, node) -> list[str]:
        problems = super().method_problems(node)
        if node.TEMPERATURE <= 0:
            problems.append(f"TEMPERATURE is {node.TEMPERATURE}; use a positive number")
        return problems

    def weight(self, set_name: str) -> float:
        """The dispersion weight on one dataset: LAMBDA_SHIFTS on a distribution shift, else LAMBDA."""
        node = self.method_cfg
        return node.LAMBDA_SHIFTS if self.set_names[set_name] in DISTRIBUTION_SHIFTS else node.LAMBDA

    def objective(self):
        return calibrated_entropy(self.weight(self.current_set))

    def view_settings(self, set_name: str) -> tuple[int, str]:
        node = self.method_cfg
        dataset = self.set_names[set_name]
        if node.AUG == "auto":
            return node.N_VIEWS, "crop" if dataset in SOURCE_SETS else "augmix"
        return node.N_VIEWS, resolve_aug(node.AUG, dataset)

    def adapt(self, state: tuple, features: torch.Tensor) -> Adapted:
        logits = super().adapt(state, features)
        return Adapted(logits, probs=(logits / self.method_cfg.TEMPERATURE).softmax(-1))

    def method_detail(self) -> dict:
        node = self.method_cfg
        return {**super().method_detail(), "lambda": node.LAMBDA, "lambda_shifts": node.LAMBDA_SHIFTS,
                "temperature": node.TEMPERATURE}
