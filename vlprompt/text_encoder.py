"""CLIP's text tower on prompt embeddings, with exact end-of-text truncation.

CLIP's text transformer is causal and the feature is read at the end-of-text (EOT) token, so
positions after the last EOT of a batch can never influence any feature that is read. Running the
prompts only up to the longest prompt's EOT position gives the same features with a fraction of the
work and memory (typical CoOp prompts end near position 20 of 77).
"""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Additive causal mask ``(length, length)``: -inf above the diagonal, as CLIP builds its own."""
    mask = torch.full((length, length), float("-inf"), device=device, dtype=dtype)
    return mask.triu_(1)


class PromptTextEncoder(nn.Module):
    """Maps prompt token embeddings ``(..., L, D)`` to projected text features ``(..., E)``.

    ``tokenized`` holds the token ids of the same prompts (``(N, L)`` or broadcastable over the
    leading dims); the EOT position is where the id is largest, as in CLIP. With ``truncate`` (the
    default) only positions up to the batch's last EOT are computed; ``truncate=False`` runs all
    ``L`` positions and exists to prove the two agree.
    """

    def __init__(self, clip_model: nn.Module, truncate: bool = True) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.truncate = truncate

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
        lead_shape = prompts.shape[:-2]
        length, width = prompts.shape[-2:]
        x = prompts.reshape(-1, length, width)
        eot = tokenized.argmax(dim=-1).expand(lead_shape).reshape(-1)
        if self.truncate:
            length = int(eot.max()) + 1
            x = x[:, :length]
        x = x + self.positional_embedding[:length].to(x.dtype)
        x = x.permute(1, 0, 2)  # sequence-first, as CLIP's attention layers expect
        mask = causal_mask(length, x.device, x.dtype)
        for block in self.transformer.resblocks:
            # The block's own forward would use its stored 77x77 mask; the same computation with a
            # mask of the truncated length (identical entries on the kept positions).
            h = block.ln_1(x)
            x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            x = x + block.mlp(block.ln_2(x))
        x = x.permute(1, 0, 2)
        x = self.ln_final(x).to(self.dtype)
        features = x[torch.arange(x.shape[0], device=x.device), eot.to(x.device)] @ self.text_projection
        return features.reshape(*lead_shape, -1)
