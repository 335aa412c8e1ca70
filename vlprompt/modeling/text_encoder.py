"""CLIP's text tower on prompt embeddings, with three exact savings, for every backbone family.

The tower's parts come from the family's :class:`~vlprompt.modeling.backbones.ClipAdapter` (blocks in
pieces, attention layout, end-of-text rule, final norm and projection). CLIP's text transformer is causal and the feature is read at the end-of-text (EOT) token, so:

* positions after the last EOT of a batch can never influence any feature that is read: prompts are
  run only up to the longest prompt's EOT (typical CoOp prompts end near position 20 of 77);
* when every class's prompt starts with the same tokens (``[SOS][ctx]`` with a shared context and the
  class name at the end), those positions have the same hidden states in every class; they are
  computed once per context and the class-specific positions attend to them (as a KV cache would,
  without copying its keys and values per class). Each class then runs only up to its own EOT: the
  classes' own positions are packed end to end (sorted by length), so no class pays for the longest
  class name, and attention runs per bucket of same-length classes;
* many prompts (CoCoOp: images × classes) can be encoded in chunks of at most ``max_prompts``, which
  bounds the peak memory of a pass without changing any feature.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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
        if shared_prefix:
            return self._project(self._run_packed(x, eot, shared_prefix))
        length = int(eot.max()) + 1 if self.truncate else x.shape[-2]
        hidden = self._run(x[:, :, :length].flatten(0, 1)).unflatten(0, x.shape[:2])
        # Only the EOT position is read; ln_final works per position, so it runs on that one alone.
        return self._project(hidden.gather(2, eot[:, :, None, None].expand(*eot.shape, 1, hidden.shape[-1])).squeeze(2))

    def _project(self, picked: torch.Tensor) -> torch.Tensor:
        """ln_final and the projection, on the hidden states read at the EOT tokens ``(..., D)``."""
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

    def _run_packed(self, x: torch.Tensor, eot: torch.Tensor, shared: int) -> torch.Tensor:
        """Hidden states ``(G, C, D)`` at the EOT tokens of prompts ``x`` ``(G, C, L, D)`` whose first ``shared``
        positions are the same for all C classes of a group.

        The shared positions are computed once per group. The classes' own positions (up to each class's
        own EOT; all of them with ``truncate=False``) are packed end to end, classes sorted by length, so
        the linear layers and MLPs run on exactly the tokens that exist (none pays for the longest class
        name). Attention runs per bucket of same-length classes: each query against the prefix's keys and
        values (one copy for all classes, never expanded per class) and, causally, its own class's.
        """
        plan = packed_plan(eot, x.shape[-2], shared, self.truncate)
        tokens = x.flatten(1, 2).index_select(1, plan.index.to(x.device))  # (G, shared + T, D)
        tokens = tokens + self.positional_embedding.index_select(0, plan.positions.to(x.device)).to(x.dtype)
        prefix, rest = tokens[:, :shared], tokens[:, shared:]
        prefix_mask = causal_mask(shared, x.device, x.dtype)
        own_masks = {size: causal_mask(size, x.device, x.dtype) for size, _ in plan.buckets}
        read = plan.read.to(x.device)
        read = read[:, :, None].expand(*read.shape, x.shape[-1])  # (G, C, D): each prompt's EOT in the packing
        last = len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            attn = block.attn
            heads = attn.num_heads
            q_p, k_p, v_p = _heads(F.linear(block.ln_1(prefix), attn.in_proj_weight, attn.in_proj_bias), heads)
            qkv = F.linear(block.ln_1(rest), attn.in_proj_weight, attn.in_proj_bias)
            pieces, start = [], 0
            for size, count in plan.buckets:
                bucket = qkv[:, start : start + size * count].unflatten(1, (count, size))
                pieces.append(_attend_after_prefix(bucket, heads, k_p, v_p, own_masks[size]))
                start += size * count
            own = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
            if depth == last:  # only the EOT tokens' outputs are read: the last block's rest runs on those
                own, rest = own.gather(1, read), rest.gather(1, read)
            rest = rest + _scaled(block.ls_1, F.linear(own, attn.out_proj.weight, attn.out_proj.bias))
            rest = rest + _scaled(block.ls_2, block.mlp(block.ln_2(rest)))
            if depth < last:  # in the last block only the prefix's keys and values are needed
                out_p = _attend(q_p, k_p, v_p, prefix_mask)
                prefix = prefix + _scaled(block.ls_1, F.linear(_merge(out_p), attn.out_proj.weight, attn.out_proj.bias))
                prefix = prefix + _scaled(block.ls_2, block.mlp(block.ln_2(prefix)))
        return rest


class PackedPlan(NamedTuple):
    """Where the tokens of a packed text batch come from. ``index``: flat positions in a group's ``(C·L)``
    token grid (class 0's shared prefix, then every class's own positions, classes sorted by length);
    ``positions``: their positional-embedding rows; ``buckets``: ``(own length, classes)`` in packed order;
    ``read``: ``(G, C)`` the packed index (after the prefix) of each prompt's EOT token."""

    index: torch.Tensor
    positions: torch.Tensor
    buckets: list[tuple[int, int]]
    read: torch.Tensor


def packed_plan(eot: torch.Tensor, length: int, shared: int, truncate: bool = True) -> PackedPlan:
    """The :class:`PackedPlan` of prompts of ``length`` positions with EOT positions ``eot`` ``(G, C)``: each
    class runs up to the latest EOT of its column (the same in every group for ordinary prompts), or over
    all ``length`` positions without ``truncate``."""
    eot = eot.cpu()
    ends = eot.amax(0) + 1 if truncate else torch.full_like(eot[0], length)  # (C,) positions run per class
    order = torch.argsort(ends, stable=True)
    sizes = ends[order] - shared  # own positions per class, in packed order
    starts = sizes.cumsum(0) - sizes
    offset = torch.empty_like(starts)
    offset[order] = starts
    own = shared + torch.arange(int(sizes.sum())) - starts.repeat_interleave(sizes)
    values, counts = torch.unique_consecutive(sizes, return_counts=True)
    prefix = torch.arange(shared)
    return PackedPlan(
        index=torch.cat([prefix, order.repeat_interleave(sizes) * length + own]),
        positions=torch.cat([prefix, own]),
        buckets=list(zip(values.tolist(), counts.tolist())),
        read=offset[None, :] + eot - shared,
    )


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


def _attend_after_prefix(qkv: torch.Tensor, heads: int, k_p: torch.Tensor, v_p: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Attention of ``n`` same-length prompts' own positions: packed projections ``qkv`` ``(G, n, S, 3D)``
    attend to their group's prefix keys/values ``k_p``, ``v_p`` ``(G, H, P, d)`` and, under the additive
    causal ``mask`` ``(S, S)``, to their own prompt's positions. One softmax over [prefix, own] per query,
    as attention over the concatenated sequence, without copying the prefix per prompt. Returns
    ``(G, n·S, D)``."""
    groups, n, size, width3 = qkv.shape
    head_dim = width3 // (3 * heads)
    q, k, v = qkv.reshape(groups, n, size, 3, heads, head_dim).permute(3, 0, 4, 1, 2, 5).unbind(0)  # (G, H, n, S, d)
    prefix_len = k_p.shape[-2]
    scale = 1.0 / math.sqrt(head_dim)
    q = q * scale
    to_prefix = torch.matmul(q.reshape(groups, heads, n * size, head_dim), k_p.transpose(-1, -2))
    to_own = torch.matmul(q, k.transpose(-1, -2)) + mask
    weights = torch.cat([to_prefix.view(groups, heads, n, size, prefix_len), to_own], dim=-1).softmax(dim=-1)
    out = torch.matmul(weights[..., :prefix_len].reshape(groups, heads, n * size, prefix_len), v_p)
    out = out.view(groups, heads, n, size, head_dim) + torch.matmul(weights[..., prefix_len:], v)
    return out.permute(0, 2, 3, 1, 4).reshape(groups, n * size, heads * head_dim)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax attention with an additive mask, scaled by 1/sqrt(d) as nn.MultiheadAttention does."""
    lead = q.shape[:-2]
    out = F.scaled_dot_product_attention(
        q.reshape(-1, *q.shape[-2:]), k.reshape(-1, *k.shape[-2:]), v.reshape(-1, *v.shape[-2:]),
        attn_mask=mask.to(q.dtype), scale=1.0 / math.sqrt(q.shape[-1]),
    )
    return out.reshape(*lead, *out.shape[-2:])


def prompt_floor_flops(eot: list[int], shared: int, width: int, layers: int, embed_dim: int) -> dict[str, int]:
    """The FLOPs prompts really need in a text tower of ``layers`` pre-norm blocks of ``width`` (MLP 4x): each
    prompt run up to its own EOT position ``eot[c]``, its first ``shared`` positions computed once for all,
    and of the last block only what the EOT features need (keys and values of every position, the rest
    for the EOT tokens alone), then projected to ``embed_dim``. ``forward``, and ``backward`` to the prompt
    embeddings (the tower is frozen: no weight gradients; every computed token's input gradient counted).
    Matrix products only, 2 FLOPs per multiply-add, attention counted densely per query (all keys its
    prompt has), as torch's FLOP counter counts them. The floor of :class:`PromptTextEncoder`'s packed path,
    which benchmarks divide by."""
    tokens = shared + sum(e + 1 - shared for e in eot)
    n_prompts = len(eot)
    # qkv 6, out 2, MLP 16 (x width² per token); the last block: qkv for all, out and MLP for the EOTs
    linear = 24 * width * width * tokens * (layers - 1) + 6 * width * width * tokens + 18 * width * width * n_prompts
    pairs = shared * shared + sum((e + 1 - shared) * (e + 1) for e in eot)  # query-key pairs per block
    last_pairs = sum(e + 1 for e in eot)  # the last block: the EOT queries alone
    attention = 4 * width * (pairs * (layers - 1) + last_pairs)  # scores and weighted values
    projection = 2 * width * embed_dim * n_prompts
    return {"forward": linear + attention + projection, "backward": linear + 2 * attention + projection}
