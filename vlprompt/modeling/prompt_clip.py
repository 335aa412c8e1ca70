"""A frozen CLIP-like model whose classifier is the text encoding of learned prompts: the model of CoOp
and of the methods built on it (GenPT, CoCoOp's image-conditioned variant), for any backbone family."""

from __future__ import annotations

import torch
from torch import nn

from vlprompt.modeling.backbones.base import ClipAdapter, adapter_for
from vlprompt.modeling.heads import clip_logits, normalize
from vlprompt.modeling.prompts import PromptLearner
from vlprompt.modeling.text_encoder import PromptTextEncoder


class PromptCLIP(nn.Module):
    """``prompt_learner`` (the only trained part) + the frozen image tower, prompt-aware text encoder and
    CLIP's scoring head. ``max_prompts`` bounds the prompts per text-encoder pass (see PromptTextEncoder)."""

    def __init__(self, prompt_learner: PromptLearner, clip_model: nn.Module | ClipAdapter, max_prompts: int = 0) -> None:
        super().__init__()
        self.prompt_learner = prompt_learner
        adapter = adapter_for(clip_model)
        self.image_encoder = adapter.visual
        self.text_encoder = PromptTextEncoder(adapter, max_prompts=max_prompts)
        self.logit_scale = adapter.logit_scale
        self.logit_bias = adapter.logit_bias
        self.dtype = adapter.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised image features ``(B, E)``."""
        return normalize(self.image_encoder(image.type(self.dtype)))

    def encode_prompts(self, prompts: torch.Tensor) -> torch.Tensor:
        """Normalised text features of prompt embeddings ``(..., n_cls, L, D)`` built by the learner."""
        learner = self.prompt_learner
        return normalize(self.text_encoder(prompts, learner.tokenized_prompts, learner.shared_prefix_length))

    def text_features(self) -> torch.Tensor:
        """Normalised class text features ``(n_cls, E)`` of the learned prompts."""
        return self.encode_prompts(self.prompt_learner())

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """CLIP's scores of normalised image features against a classifier (shared or per image)."""
        return clip_logits(image_features, text_features, self.logit_scale, self.logit_bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_image(image), self.text_features())
