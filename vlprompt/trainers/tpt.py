"""TPT (Shu et al., NeurIPS 2022): test-time prompt tuning, one test image at a time.

For every test image: N views (the original + random crops, AugMix on top for fine-grained sets), keep the
SELECTION_P most confident (lowest-entropy) views, take STEPS AdamW steps on the prompt context to lower the
entropy of their averaged prediction, predict the original view with the tuned prompt, then start the next
image from the initial prompt again. The initial prompt is hand-crafted words (CTX_INIT) or a CoOp/CoCoOp
checkpoint (TRAINER.TPT.LOAD, or --model-dir/--load-epoch).

Nothing is trained: ``train()`` evaluates. Exact savings over the reference: views are encoded once per
image (the original's feature is reused for the prediction), the text tower stops at the last end-of-text
token and computes the shared [SOS][context] positions once, CLIP is loaded once for all datasets, and on a
GPU several images are tuned at once with independent prompts (TRAINER.TPT.BATCH_IMAGES). Predictions are
logged per image, so a killed run resumes, and TRAINER.TPT.SHARD i/n evaluates one part of the test set
(``python -m vlprompt.tta.merge`` combines the parts).

This file holds the method's keys; where each image's prompt starts and the tuner are shared with C-TPT
(:mod:`vlprompt.tta.prompt_tuning`), and the datasets, views, per-image loop, resume and shards are the
test-time harness (:mod:`vlprompt.tta.harness`).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.tta.harness import add_test_time_keys
from vlprompt.tta.prompt_tuning import PromptTuningMethod, add_prompt_start_keys, add_prompt_tuning_keys


@register_cfg_extension
def add_tpt_keys(cfg) -> None:
    """``TRAINER.TPT.*`` with the reference's defaults: 64 views (``AUG auto``: crops for the ImageNet
    family, AugMix otherwise), the 10% most confident kept, one AdamW step at lr 5e-3 from "a photo of a",
    fp16 autocast on CUDA."""
    cfg.TRAINER.TPT = CN()
    add_test_time_keys(cfg.TRAINER.TPT)
    add_prompt_tuning_keys(cfg.TRAINER.TPT)
    add_prompt_start_keys(cfg.TRAINER.TPT)


@TRAINER_REGISTRY.register()
class TPT(PromptTuningMethod):
    """Test-time prompt tuning on the test split of every dataset in TRAINER.TPT.TEST_SETS (or DATASET.NAME)."""

    cfg_node = "TPT"
