"""CLIP's text tower on prompt embeddings, with three exact savings, for every backbone family.

The tower's parts come from the family's :class:`~vlprompt.modeling.backbones.ClipAdapter` (blocks in
pieces, attention layout, end-of-text rule, final norm and projection). CLIP's text transformer is causal and the feature is read at the end-of-text (EOT) token, so:

* positions after the last EOT of a batch can never influence any feature that is read: prompts are
  run only up to the longest prompt's EOT (typical CoOp prompts end near position 20 of 77);
* when every class's prompt starts with the same tokens (``[SOS][ctx]`` with a shared context and the
  class name at the end), those positions have the same hidden states in every class; they are
  computed once per context and the class-specific positions attend to them (as a KV cache would);
* many prompts (CoCoOp: images × classes) can be encoded in chunks of at most ``max_prompts``, which
  bounds the peak memory of a pass without changing any feature.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.modeling.backbones.base import ClipAdapter, adapter_for


def causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask ``(length, length)``: -inf above the diagonal, as CLIP builds its own."""
    mask = torch.full((length, length), float("-inf"), device=device, dtype=dtype)
    return mask.triu_(1)


class PromptTextEncoder(nn.Module):
    """Maps prompt token embeddings ``(..., L, D)`` to projected text features ``(..., E)``.

    ``tokenized`` holds the token ids of the same prompts (``(N, L)`` or broadcastable over the
    leading dims); the EOT position is where the id is largest, as in CLIP. With ``truncate`` (the
    default) only positions up to the last EOT are computed. ``forward(..., shared_prefix=P)`` declares
    that the first ``P`` positions are the same for every entry of the last leading dim (the classes);
    they are then computed once (``share_prefix``). ``max_prompts`` > 0 encodes at most that many
    prompts per pass. ``truncate=False, share_prefix=False`` is CLIP's own computation, kept to prove the
    others agree with it.
    """

    def __init__(
        self, clip_model: nn.Module | ClipAdapter, truncate: bool = True, max_prompts: int = 0,
        share_prefix: bool = True,
    ) -> None:
        super().__init__()
        adapter = adapter_for(clip_model)
        self.transformer = adapter.transformer
        self.positional_embedding = adapter.positional_embedding
        self.ln_final = adapter.ln_final
        self.text_projection = adapter.text_projection
        # Plain data and references into the modules above (no reference to the whole model).
        self.blocks = adapter.text_blocks()
        self.batch_first = adapter.batch_first()
        self.eot_positions = adapter.eot_rule()
        self.truncate = truncate
        self.max_prompts = max_prompts
        self.share_prefix = share_prefix

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor, shared_prefix: int = 0) -> torch.Tensor:
        lead_shape = prompts.shape[:-2]
        length, width = prompts.shape[-2:]
        n_cls = lead_shape[-1] if lead_shape else 1
        x = prompts.reshape(-1, n_cls, length, width)  # (groups, classes, L, D)
        eot = self.eot_positions(tokenized).expand(lead_shape).reshape(x.shape[:2]).to(x.device)
        share = shared_prefix if self.share_prefix and self._can_share(shared_prefix, eot) else 0
        if self.max_prompts and x.shape[0] * n_cls > self.max_prompts:
            features = torch.cat([
                torch.cat([self._encode(x[g0:g1, c0:c1], eot[g0:g1, c0:c1], share) for c0, c1 in classes], dim=1)
                for g0, g1, classes in self._chunks(*x.shape[:2])
            ])
        else:
            features = self._encode(x, eot, share)
        return features.reshape(*lead_shape, -1)

    # ------------------------------------------------------------------------------------------ helpers
    def _can_share(self, shared_prefix: int, eot: torch.Tensor) -> bool:
        # Every EOT must lie after the shared part (it always does for [SOS][ctx][CLASS].[EOT]) and the
        # attention must be a standard nn.MultiheadAttention whose packed projections we can reuse.
        if shared_prefix <= 0 or int(eot.min()) < shared_prefix:
            return False
        return all(isinstance(block.attn, nn.MultiheadAttention) and block.attn._qkv_same_embed_dim
                   for block in self.blocks)

    def _chunks(self, groups: int, n_cls: int):
        """(g0, g1, class ranges) covering all prompts, each piece at most ``max_prompts`` prompts:
        several whole groups when a group fits, else one group split over its classes."""
        if n_cls <= self.max_prompts:
            step = self.max_prompts // n_cls
            for g0 in range(0, groups, step):
                yield g0, min(g0 + step, groups), [(0, n_cls)]
        else:
            classes = [(c0, min(c0 + self.max_prompts, n_cls)) for c0 in range(0, n_cls, self.max_prompts)]
            for g0 in range(groups):
                yield g0, g0 + 1, classes

    def _encode(self, x: torch.Tensor, eot: torch.Tensor, shared_prefix: int) -> torch.Tensor:
        """Features ``(G, C, E)`` of prompts ``x`` ``(G, C, L, D)`` with EOT positions ``eot`` ``(G, C)``."""
        length = int(eot.max()) + 1 if self.truncate else x.shape[-2]
        if shared_prefix:
            hidden = self._run_shared(x[:, :, :length], shared_prefix)
            eot = eot - shared_prefix
        else:
            hidden = self._run(x[:, :, :length].flatten(0, 1)).unflatten(0, x.shape[:2])
        # Only the EOT position is read; ln_final works per position, so it runs on that one alone.
        picked = hidden.gather(2, eot[:, :, None, None].expand(*eot.shape, 1, hidden.shape[-1])).squeeze(2)
        picked = self.ln_final(picked).to(self.dtype)
        projection = self.text_projection
        return projection(picked) if isinstance(projection, nn.Module) else picked @ projection

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP's transformer on ``(N, T, D)`` (positions 0..T-1); returns hidden states ``(N, T, D)``."""
        length = x.shape[1]
        x = x + self.positional_embedding[:length].to(x.dtype)
        if not self.batch_first:
            x = x.permute(1, 0, 2)  # sequence-first, as OpenAI CLIP's attention layers expect
        mask = causal_mask(length, x.device, x.dtype)
        for block in self.blocks:
            # The block's own forward would use its stored 77x77 mask; the same computation with a
            # mask of the truncated length (identical entries on the kept positions).
            h = block.ln_1(x)
            x = x + _scaled(block.ls_1, block.attn(h, h, h, need_weights=False, attn_mask=mask)[0])
            x = x + _scaled(block.ls_2, block.mlp(block.ln_2(x)))
        return x if self.batch_first else x.permute(1, 0, 2)

    def _run_shared(self, x: torch.Tensor, shared: int) -> torch.Tensor:
        """Hidden states ``(G, C, T - shared, D)`` of the class-specific positions of ``x`` ``(G, C, T, D)``,
        whose first ``shared`` positions are the same for all C classes of a group."""
        length = x.shape[-2]
        position = self.positional_embedding[:length].to(x.dtype)
        prefix = x[:, 0, :shared] + position[:shared]  # (G, P, D): computed once per group
        rest = x[:, :, shared:] + position[shared:]  # (G, C, S, D)
        suffix_len = length - shared
        # The class-specific positions see the whole prefix and, causally, each other.
        prefix_mask = causal_mask(shared, x.device, x.dtype)
        rest_mask = torch.cat(
            [torch.zeros(suffix_len, shared, device=x.device, dtype=x.dtype),
             causal_mask(suffix_len, x.device, x.dtype)], dim=1,
        )
        for block in self.blocks:
            attn = block.attn
            heads = attn.num_heads
            q_p, k_p, v_p = _heads(F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias), heads)
            q_r, k_r, v_r = _heads(F.linear(block.ln_1(rest), attn.in_proj_weight, attn.in_proj_bias), heads)
            # (G, H, P, d) against itself; (G, C, H, S, d) against [prefix of its group, itself].
            out_p = _attend(q_p, k_p, v_p, prefix_mask)
            keys = torch.cat([k_p.unsqueeze(1).expand(-1, rest.shape[1], -1, -1, -1), k_r], dim=-2)
            values = torch.cat([v_p.unsqueeze(1).expand(-1, rest.shape[1], -1, -1, -1), v_r], dim=-2)
            out_r = _attend(q_r, keys, values, rest_mask)
            prefix = prefix + _scaled(block.ls_1, F.linear(_merge(out_p), attn.out_proj.weight, attn.out_proj.bias))
            rest = rest + _scaled(block.ls_1, F.linear(_merge(out_r), attn.out_proj.weight, attn.out_proj.bias))
            prefix = prefix + _scaled(block.ls_2, block.mlp(block.ln_2(prefix)))
            rest = rest + _scaled(block.ls_2, block.mlp(block.ln_2(rest)))
        return rest


def _scaled(layer_scale: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """A block's layer scale (open_clip's ``ls_1``/``ls_2``) on a residual branch; none in OpenAI's CLIP."""
    return x if layer_scale is None else layer_scale(x)


def _heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split packed projections ``(..., T, 3D)`` into q, k, v of shape ``(..., H, T, D/H)``."""
    *lead, length, width3 = qkv.shape
    head_dim = width3 // (3 * heads)
    q, k, v = qkv.reshape(*lead, length, 3, heads, head_dim).movedim(-3, 0).transpose(-3, -2).unbind(0)
    return q, k, v


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(..., H, T, d)`` → ``(..., T, H·d)``."""
    return x.transpose(-3, -2).flatten(-2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention with an additive mask, scaled by 1/sqrt(d) as nn.MultiheadAttention does."""
    lead = q.shape[:-2]
    out = F.scaled_dot_product_attention(
        q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]),
        attn_mask=mask.to(q.dtype), scale=1.0 / math.sqrt(q.shape[-1]),
    )
    return out.reshape(*lead, *out.shape[-2:])
