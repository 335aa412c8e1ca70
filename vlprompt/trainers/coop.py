"""CoOp (Zhou et al., IJCV 2022): a learned context in place of the hand-crafted prompt words."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.metrics import compute_accuracy
from vlprompt.modeling.prompt_checkpoints import register_checkpoint_kind
from vlprompt.modeling.prompt_clip import PromptCLIP
from vlprompt.modeling.prompts import learner_from_config
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.tta.sources import learned_context


@register_cfg_extension
def add_coop_keys(cfg) -> None:
    """``TRAINER.COOP.*`` with CoOp's defaults."""
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors (the number of words when CTX_INIT is set)
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words, "_" for spaces
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp, bf16
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle or front


class CoOpCLIP(PromptCLIP):
    """Frozen CLIP whose classifier is the text encoding of learned prompts for every class."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, coop_cfg) -> None:
        super().__init__(learner_from_config(classnames, clip_model, coop_cfg), clip_model)


@TRAINER_REGISTRY.register()
class CoOp(PromptLearningTrainer):
    """Context Optimization: cross-entropy on few-shot labels, only the context is trained."""

    cfg_node = "COOP"

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return CoOpCLIP(classnames, clip_model, self.method_cfg)

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            output = self.model(image)
            loss = F.cross_entropy(output, label)
        self.backward_and_update(loss)
        summary = {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary


# TPT (and any other consumer of prompt checkpoints) can start from a CoOp context: a ``ctx`` alone.
register_checkpoint_kind("coop", "ctx only", lambda keys: keys == {"ctx"}, learned_context)
