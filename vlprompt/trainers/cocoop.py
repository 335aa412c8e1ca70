"""CoCoOp (Zhou et al., CVPR 2022): the context is shifted per image by a small meta-network."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.prompts import PromptLearner
from vlprompt.text_encoder import PromptTextEncoder


@register_cfg_extension
def add_cocoop_keys(cfg) -> None:
    """``TRAINER.COCOOP.*`` with CoCoOp's defaults."""
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16
    cfg.TRAINER.COCOOP.CTX_INIT = ""
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, amp, bf16
    # Not in CoCoOp: at most this many prompts (images x classes) per text-encoder pass, which bounds the
    # memory of evaluating a test batch of 100 images on 1000 classes; 0 encodes a whole batch at once.
    cfg.TRAINER.COCOOP.MAX_PROMPTS = 8192


class ConditionalPromptLearner(PromptLearner):
    """CoOp's prompt learner plus ``meta_net`` (Linear → ReLU → Linear, names as CoCoOp's checkpoints)."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, n_ctx: int, ctx_init: str) -> None:
        super().__init__(classnames, clip_model, n_ctx=n_ctx, ctx_init=ctx_init)
        vis_dim = clip_model.visual.output_dim
        ctx_dim = self.ctx.shape[-1]
        self.meta_net = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
                    ("relu", nn.ReLU(inplace=True)),
                    ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
                ]
            )
        ).to(device=self.ctx.device, dtype=self.ctx.dtype)

    def conditional_context(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context ``(B, n_ctx, D)``: the shared context shifted by ``meta_net(feature)``."""
        bias = self.meta_net(image_features.to(self.ctx.dtype))
        return self.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(B, n_cls, L, D)``, one prompt set per image."""
        return self.assemble(self.conditional_context(image_features))


class CoCoOpCLIP(nn.Module):
    """Frozen CLIP with image-conditioned prompts; returns the CE loss in training, logits otherwise."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, cocoop_cfg) -> None:
        super().__init__()
        self.prompt_learner = ConditionalPromptLearner(
            classnames, clip_model, n_ctx=cocoop_cfg.N_CTX, ctx_init=cocoop_cfg.CTX_INIT
        )
        self.image_encoder = clip_model.visual
        self.text_encoder = PromptTextEncoder(clip_model, max_prompts=cocoop_cfg.MAX_PROMPTS)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_cls)`` for normalised image features; the images' prompts are encoded together
        (CoCoOp loops over the images), in passes of at most ``MAX_PROMPTS`` prompts."""
        learner = self.prompt_learner
        prompts = learner(image_features)
        text_features = self.text_encoder(prompts, learner.tokenized_prompts, learner.shared_prefix_length)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        # per image: its features against its own class prompts
        return self.logit_scale.exp() * torch.einsum("bd,bcd->bc", image_features, text_features)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = self.logits_from_features(image_features)
        if self.prompt_learner.training:
            return F.cross_entropy(logits, label)
        return logits


@TRAINER_REGISTRY.register()
class CoCoOp(PromptLearningTrainer):
    """Conditional Context Optimization; batch size 1 in the reference configs."""

    cfg_node = "COCOOP"

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        return CoCoOpCLIP(classnames, clip_model, self.method_cfg)

    def forward_backward(self, batch) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            loss = self.model(image, label)
        self.backward_and_update(loss)
        summary = {"loss": loss.item()}
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return summary
