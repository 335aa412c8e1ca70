"""Tokenising and prompt assembly: the one place that turns class names into CLIP text input.

Prompt learners (shared, class-specific, and the image-conditioned one CoCoOp extends) work on any
backbone family through its :class:`~vlprompt.modeling.backbones.ClipAdapter` (tokenizer, token embedding,
text width); the model passed in may be the model itself or its adapter."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from vlprompt.modeling.backbones.base import ClipAdapter, adapter_for

log = logging.getLogger(__name__)


def classname_text(classname: str) -> str:
    """How a class name is written into a prompt: underscores become spaces, as in CoOp."""
    return classname.replace("_", " ")


def tokenize(texts: str | Sequence[str]) -> torch.Tensor:
    """OpenAI CLIP BPE token ids, shape ``(n, 77)``, int64 (clip-anytorch's tokenizer, no truncation); a
    model's own tokenizer is ``adapter_for(model).tokenizer``."""
    from vlprompt.modeling.backbones.openai import openai_tokenizer

    return openai_tokenizer()(texts)


@torch.no_grad()
def build_text_classifier(
    clip_model: nn.Module | ClipAdapter, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256,
) -> torch.Tensor:
    """L2-normalised text features ``(n_cls, D)`` averaged over ``templates`` (one template: ZeroshotCLIP;
    several: the ZeroshotCLIP2 ensemble, each template's features normalised before averaging)."""
    adapter = adapter_for(clip_model)
    device = adapter.token_embedding.weight.device
    mean_features = 0
    for template in templates:
        prompts = [template.format(classname_text(name)) for name in classnames]
        tokens = adapter.tokenizer(prompts)
        feats = torch.cat(
            [adapter.model.encode_text(tokens[i : i + batch_size].to(device)) for i in range(0, len(tokens), batch_size)]
        )
        mean_features = mean_features + feats / feats.norm(dim=-1, keepdim=True)
    mean_features = mean_features / len(templates)
    return mean_features / mean_features.norm(dim=-1, keepdim=True)


CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def context_words(ctx_init: str) -> str:
    """CTX_INIT as written into the prompt: underscores are spaces (``a_photo_of_a``), stripped."""
    return ctx_init.replace("_", " ").strip()


def learner_from_config(classnames: Sequence[str], clip_model: nn.Module | ClipAdapter, node) -> PromptLearner:
    """CoOp's prompt learner from a method's config node (``N_CTX``, ``CTX_INIT``, ``CSC``,
    ``CLASS_TOKEN_POSITION``), for CoOp and the methods that share its prompt."""
    csc = node.CSC
    if csc and context_words(node.CTX_INIT):
        # CoOp initialises from words only as one shared context and ignores CSC then; doing the same
        # keeps checkpoints of such runs interchangeable (ctx of shape (n_ctx, D)).
        log.info("CSC is ignored when CTX_INIT is set (as in CoOp): one context shared by all classes")
        csc = False
    return PromptLearner(classnames, clip_model, n_ctx=node.N_CTX, ctx_init=node.CTX_INIT, csc=csc,
                         class_token_position=node.CLASS_TOKEN_POSITION)


class PromptLearner(nn.Module):
    """Learnable context + frozen class-name embeddings → prompt embeddings ``[SOS][ctx][CLASS].[EOS]``.

    State-dict names and shapes are CoOp's (``ctx``, ``token_prefix``, ``token_suffix``), so its
    checkpoints interchange with the original code. ``ctx`` is ``(n_ctx, D)`` (shared) or
    ``(n_cls, n_ctx, D)`` (class-specific, CSC). With ``ctx_init`` the context starts from the
    embeddings of those words and ``n_ctx`` is the number of words, as in CoOp.
    """

    def __init__(
        self,
        classnames: Sequence[str],
        clip_model: nn.Module | ClipAdapter,
        n_ctx: int = 16,
        ctx_init: str = "",
        csc: bool = False,
        class_token_position: str = "end",
        verbose: bool = True,
    ) -> None:
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f'CLASS_TOKEN_POSITION "{class_token_position}" is not one of {", ".join(CLASS_TOKEN_POSITIONS)}'
            )
        adapter = adapter_for(clip_model)
        tokenizer = adapter.tokenizer
        dtype = adapter.dtype
        token_embedding = adapter.token_embedding
        ctx_dim = adapter.text_width
        n_cls = len(classnames)
        self.verbose = verbose

        ctx_init = context_words(ctx_init)
        if ctx_init:
            n_ctx = len(ctx_init.split(" "))
            with torch.no_grad():
                init_ids = tokenizer(ctx_init).to(token_embedding.weight.device)
                ctx_vectors = token_embedding(init_ids).type(dtype)[0, 1 : 1 + n_ctx].clone()
            if csc:
                self._log("Initializing class-specific contexts from the same words")
                ctx_vectors = ctx_vectors.unsqueeze(0).repeat(n_cls, 1, 1)
            prompt_prefix = ctx_init
        else:
            if n_ctx < 1:
                raise ValueError(f"N_CTX must be >= 1 when CTX_INIT is empty (got {n_ctx})")
            if csc:
                self._log("Initializing class-specific contexts")
                ctx_vectors = torch.empty(n_cls, n_ctx, ctx_dim, dtype=dtype)
            else:
                self._log("Initializing a generic context")
                ctx_vectors = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        self._log(f'Initial context: "{prompt_prefix}"')
        self._log(f"Number of context words (tokens): {n_ctx}")
        self.ctx = nn.Parameter(ctx_vectors.to(token_embedding.weight.device))

        names = [classname_text(name) for name in classnames]
        name_lens = [len(tokenizer.encode(name)) for name in names]
        prompts = [f"{prompt_prefix} {name}." for name in names]
        tokenized = tokenizer(prompts).to(token_embedding.weight.device)
        with torch.no_grad():
            embedding = token_embedding(tokenized).type(dtype)
        # Saved in checkpoints like CoOp's (so the original code can read ours), ignored on load.
        self.register_buffer("token_prefix", embedding[:, :1, :])  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])  # CLS, EOS and padding
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.register_buffer(
            "position_index",
            _class_position_index(name_lens, n_ctx, tokenized.shape[1], class_token_position),
            persistent=False,
        )
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.csc = csc
        self.name_lens = name_lens
        self.class_token_position = class_token_position
        self.prompt_prefix = prompt_prefix

    @property
    def shared_prefix_length(self) -> int:
        """How many leading prompt positions are the same for every class (``[SOS][ctx]`` when the context
        is shared and the class name comes last), for :class:`PromptTextEncoder` to compute once; else 0."""
        return 1 + self.n_ctx if self.class_token_position == "end" and not self.csc else 0

    def _log(self, message: str) -> None:
        if self.verbose:
            log.info(message)

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings ``(..., n_cls, L, D)`` for a context of shape ``(..., n_ctx, D)`` (shared)
        or ``(..., n_cls, n_ctx, D)`` (CSC); leading dims are a batch (CoCoOp: one context per image)."""
        n_cls = self.n_cls
        if not self.csc:
            ctx = ctx.unsqueeze(-3).expand(*ctx.shape[:-2], n_cls, -1, -1)
        lead = ctx.shape[:-3]
        prefix = self.token_prefix.expand(*lead, -1, -1, -1)
        suffix = self.token_suffix.expand(*lead, -1, -1, -1)
        prompts = torch.cat([prefix, ctx.to(prefix.dtype), suffix], dim=-2)
        if self.class_token_position == "end":
            return prompts
        # middle/front: move the class-name tokens into place, one gather for all classes.
        index = self.position_index.view(*([1] * len(lead)), n_cls, -1, 1).expand(*prompts.shape)
        return prompts.gather(-2, index)

    def forward(self) -> torch.Tensor:
        """Prompt embeddings ``(n_cls, L, D)`` for the learned context."""
        return self.assemble(self.ctx)


def _class_position_index(name_lens: Sequence[int], n_ctx: int, length: int, position: str) -> torch.Tensor:
    """For each class, the source position (in ``[SOS][ctx][CLASS...]`` order) of every output position.

    ``middle`` puts the first ``n_ctx // 2`` context tokens, then the class name, then the rest of the
    context; ``front`` puts the class name right after SOS, as CoOp does.
    """
    rows = []
    for name_len in name_lens:
        ctx = list(range(1, 1 + n_ctx))
        name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
        rest = list(range(1 + n_ctx + name_len, length))
        if position == "middle":
            half = n_ctx // 2
            order = [0] + ctx[:half] + name + ctx[half:] + rest
        elif position == "front":
            order = [0] + name + ctx + rest
        else:
            order = list(range(length))
        rows.append(order)
    return torch.tensor(rows, dtype=torch.long)
