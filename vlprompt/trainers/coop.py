"""CoOp (Zhou et al., IJCV 2022): a learned context in place of the hand-crafted prompt words."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.metrics import compute_accuracy
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.prompts import PromptLearner, context_words
from vlprompt.text_encoder import PromptTextEncoder


@register_cfg_extension
def add_coop_keys(cfg) -> None:
    """``TRAINER.COOP.*`` with CoOp's defaults."""
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors (the number of words when CTX_INIT is set)
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words, "_" for spaces
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp, bf16
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle or front


class CoOpCLIP(nn.Module):
    """Frozen CLIP whose classifier is the text encoding of learned prompts for every class."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, coop_cfg) -> None:
        super().__init__()
        csc = coop_cfg.CSC
        if csc and context_words(coop_cfg.CTX_INIT):
            # CoOp initialises from words only as one shared context and ignores CSC then; doing the same
            # keeps checkpoints of such runs interchangeable (ctx of shape (n_ctx, D)).
            print("CSC is ignored when CTX_INIT is set (as in CoOp): one context shared by all classes")
            csc = False
        self.prompt_learner = PromptLearner(
            classnames,
            clip_model,
            n_ctx=coop_cfg.N_CTX,
            ctx_init=coop_cfg.CTX_INIT,
            csc=csc,
            class_token_position=coop_cfg.CLASS_TOKEN_POSITION,
        )
        self.image_encoder = clip_model.visual
        self.text_encoder = PromptTextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def text_features(self) -> torch.Tensor:
        learner = self.prompt_learner
        features = self.text_encoder(learner(), learner.tokenized_prompts, learner.shared_prefix_length)
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ self.text_features().t()


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
