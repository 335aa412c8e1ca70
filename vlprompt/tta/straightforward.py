"""The straightforward TPT computation, as the reference code does it, to check and time the fast path against.

One image at a time; the prompt and the optimiser state are reset before each image; every step encodes all
views again and runs CLIP's text tower over all 77 positions of every class prompt; the prediction encodes
the original view once more. With a per-image initial context (CoCoOp) the views are encoded once and the
generated context tuned with a fresh AdamW, as the reference's TPT+CoCoOp path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from vlprompt.modeling import PromptLearner, PromptTextEncoder, adapter_for, normalize, scaled_logits
from vlprompt.tta.objective import marginal_entropy, select_confident
from vlprompt.tta.tuner import TPTSettings


class StraightforwardTPT:
    """``__call__(views)`` → (logits of the original view ``(n_cls,)``, tuned context) for one image's views
    ``(N, 3, R, R)``. ``initial_context(learner, raw_features (1, E))`` switches to the CoCoOp path."""

    def __init__(self, clip_model: nn.Module, learner: PromptLearner, settings: TPTSettings,
                 initial_context: Callable[[PromptLearner, torch.Tensor], torch.Tensor] | None = None) -> None:
        adapter = adapter_for(clip_model)
        self.image_encoder = adapter.visual
        self.text_encoder = PromptTextEncoder(adapter, truncate=False, share_prefix=False)
        self.logit_scale = adapter.logit_scale.detach().exp().float()
        self.learner = learner
        self.settings = settings
        self.initial_context = initial_context
        self.init_state = learner.ctx.detach().clone()
        self.optimizer = torch.optim.AdamW([learner.ctx], lr=settings.lr, weight_decay=settings.weight_decay)
        self.optim_state = copy.deepcopy(self.optimizer.state_dict())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.image_encoder(images.to(self.learner.ctx.dtype)).float()

    def logits(self, features: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        text = self.text_encoder(self.learner.assemble(ctx), self.learner.tokenized_prompts).float()
        return scaled_logits(normalize(features), normalize(text), self.logit_scale)

    def __call__(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.initial_context is not None:
            return self._conditional(views)
        with torch.no_grad():
            self.learner.ctx.copy_(self.init_state)
        self.optimizer.load_state_dict(self.optim_state)
        selected = None
        for _ in range(self.settings.steps):
            logits = self.logits(self.encode(views), self.learner.ctx)
            if selected is None:
                selected = select_confident(logits.detach(), self.settings.selection_p)
            loss = marginal_entropy(logits[selected])
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            logits = self.logits(self.encode(views[:1]), self.learner.ctx)[0]
        return logits, self.learner.ctx.detach().clone()

    def _conditional(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode(views)
        ctx = nn.Parameter(self.initial_context(self.learner, features[:1])[0].detach().clone().float())
        optimizer = torch.optim.AdamW([ctx], lr=self.settings.lr, weight_decay=self.settings.weight_decay)
        selected = None
        for _ in range(self.settings.steps):
            logits = self.logits(features, ctx)
            if selected is None:
                selected = select_confident(logits.detach(), self.settings.selection_p)
            loss = marginal_entropy(logits[selected])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            logits = self.logits(features[:1], ctx)[0]
        return logits, ctx.detach().clone()
