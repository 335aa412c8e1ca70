"""CoCoOp (Zhou et al., CVPR 2022): the context is shifted per image by a small meta-network."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY
from vlprompt.engine.config import register_cfg_extension
from vlprompt.engine.logging import muted
from vlprompt.modeling import PromptLearner, adapter_for, normalize
from vlprompt.modeling.prompt_checkpoints import load_prompt_state, register_checkpoint_kind
from vlprompt.modeling.prompt_clip import PromptCLIP
from vlprompt.prompt_trainer import PromptLearningTrainer
from vlprompt.tta.sources import ContextSource, tensor_fingerprint


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
        vis_dim = adapter_for(clip_model).image_output_dim
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


class CoCoOpCLIP(PromptCLIP):
    """Frozen CLIP with image-conditioned prompts; returns the CE loss in training, logits otherwise."""

    def __init__(self, classnames: list[str], clip_model: nn.Module, cocoop_cfg) -> None:
        learner = ConditionalPromptLearner(classnames, clip_model, n_ctx=cocoop_cfg.N_CTX, ctx_init=cocoop_cfg.CTX_INIT)
        super().__init__(learner, clip_model, max_prompts=cocoop_cfg.MAX_PROMPTS)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_cls)`` for normalised image features; the images' prompts are encoded together
        (CoCoOp loops over the images), in passes of at most ``MAX_PROMPTS`` prompts. Each image is scored
        against its own class prompts."""
        return self.logits(image_features, self.encode_prompts(self.prompt_learner(image_features)))

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.logits_from_features(self.encode_image(image))
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


# ------------------------------------------------------------------------------ starting TPT from CoCoOp
class CoCoOpContext(ContextSource):
    """TPT+CoCoOp: each image starts from the context CoCoOp's meta-net makes for its original view."""

    kind = "cocoop"
    shared = False

    def __init__(self, state: dict, source: str, raw_feature: bool = False) -> None:
        self.state = OrderedDict((k, v.detach().float().cpu()) for k, v in state.items())
        self.source = source
        self.raw_feature = raw_feature

    def learner(self, classnames, clip_model: nn.Module) -> PromptLearner:
        with torch.random.fork_rng(devices=[]), muted():
            learner = ConditionalPromptLearner(list(classnames), clip_model, n_ctx=self.state["ctx"].shape[0],
                                               ctx_init="")
        load_prompt_state(learner, self.state, self.source)
        return learner

    def initial_context(self, learner: PromptLearner, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return learner.conditional_context(features if self.raw_feature else normalize(features))

    def describe(self) -> str:
        return f'CoCoOp context and meta-net from "{self.source}" ({self.state["ctx"].shape[0]} tokens)'

    def fingerprint(self) -> str:
        return f"cocoop:{tensor_fingerprint(*self.state.values())}|raw={self.raw_feature}"


def _is_cocoop(keys: set[str]) -> bool:
    rest = keys - {"ctx"}
    return "ctx" in keys and bool(rest) and all(key.startswith("meta_net.") for key in rest)


def _cocoop_context(state: dict, source: str, tpt_cfg) -> ContextSource:
    return CoCoOpContext(state, source, raw_feature=bool(getattr(tpt_cfg, "COCOOP_RAW_FEATURE", False)))


register_checkpoint_kind("cocoop", "ctx + meta_net.*", _is_cocoop, _cocoop_context)
