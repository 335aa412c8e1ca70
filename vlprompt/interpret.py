"""Reading learned prompts: the vocabulary words nearest to each learned context vector.

A learned context vector lives in CLIP's token-embedding space but is rarely a word; its nearest token
embeddings (Euclidean distance, as CoOp's ``interpret_prompt.py``) hint at what it encodes. Unlike the
reference, the vocabulary is that of the backbone the context was learned with (read from the run's
``run.json``, or given), and class-specific contexts (CSC) are decoded per class.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.errors import UserKeyError, UserValueError, run_cli
from vlprompt.modeling import Tokenizer, adapter_for, load_clip
from vlprompt.modeling.backbones.openai import openai_tokenizer
from vlprompt.run_record import read_run_record

REFERENCE_BACKBONE = "RN50"  # what CoOp's script always uses
_CHUNK = 1024  # context vectors per distance computation: 1024 x 49408 floats is 200 MB


@dataclass
class NearestWords:
    """Top-k tokens for each context vector: ``tokens[i][j]`` / ``distances[i, j]`` for the flattened
    vectors (``(n_ctx)`` or, for CSC, ``(n_cls * n_ctx)`` in class-major order)."""

    ctx_shape: tuple[int, ...]
    token_ids: torch.Tensor  # (n_vectors, k)
    distances: torch.Tensor  # (n_vectors, k)
    tokens: list[list[str]]


def nearest_words(ctx: torch.Tensor, token_embedding: torch.Tensor, topk: int,
                  tokenizer: Tokenizer | None = None) -> NearestWords:
    """The ``topk`` vocabulary tokens nearest (Euclidean) to every vector of ``ctx`` ``(..., D)`` (their text
    from ``tokenizer``, OpenAI CLIP's by default)."""
    if ctx.shape[-1] != token_embedding.shape[-1]:
        raise UserValueError(
            f"context vectors have width {ctx.shape[-1]} but the token embeddings {token_embedding.shape[-1]}: "
            "the context was learned with another CLIP backbone; pass that one (--backbone)"
        )
    if not 1 <= topk <= token_embedding.shape[0]:
        raise UserValueError(f"topk must be between 1 and the vocabulary size {token_embedding.shape[0]} (got {topk})")
    vectors = ctx.detach().reshape(-1, ctx.shape[-1]).float()
    table = token_embedding.detach().float().to(vectors.device)
    ids, dists = [], []
    for start in range(0, len(vectors), _CHUNK):  # bounded memory for 1000 classes x 16 contexts
        distance = torch.cdist(vectors[start : start + _CHUNK], table)
        found = distance.topk(topk, dim=1, largest=False)
        ids.append(found.indices)
        dists.append(found.values)
    token_ids, distances = torch.cat(ids), torch.cat(dists)
    tokenizer = tokenizer or openai_tokenizer()
    tokens = [[tokenizer.token_text(int(i)) for i in row] for row in token_ids]
    return NearestWords(tuple(ctx.shape), token_ids, distances, tokens)


def backbone_of_run(checkpoint_path: str | Path) -> str | None:
    """``MODEL.BACKBONE.NAME`` of the run that wrote ``<run>/<model>/model.pth.tar-N``, from its run.json."""
    return _run_backbone(checkpoint_path)[0]


def _run_backbone(checkpoint_path: str | Path) -> tuple[str | None, str]:
    """(``MODEL.BACKBONE.NAME``, ``MODEL.BACKBONE.WEIGHTS``) of the run that wrote the checkpoint."""
    try:
        record = read_run_record(Path(checkpoint_path).resolve().parent.parent) or {}
    except (OSError, json.JSONDecodeError):
        return None, ""
    weights = ((record.get("config") or {}).get("MODEL") or {}).get("BACKBONE", {}).get("WEIGHTS", "")
    return record.get("backbone"), weights or ""


def prefix_matches(state_dict: dict, token_embedding: torch.Tensor, tokenizer: Tokenizer | None = None) -> bool | None:
    """Whether the checkpoint's saved SOS embedding (``token_prefix``) is this vocabulary's: False means
    the context was learned with another backbone. None when the checkpoint has no ``token_prefix``."""
    prefix = state_dict.get("token_prefix")
    if prefix is None or prefix.shape[-1] != token_embedding.shape[-1]:
        return None if prefix is None else False
    sot = (tokenizer or openai_tokenizer()).sot_id
    return torch.allclose(prefix.reshape(-1, prefix.shape[-1])[0].float(), token_embedding[sot].float(), atol=1e-3)


def format_nearest(found: NearestWords) -> list[str]:
    """CoOp's lines ``<i>: [tokens] [distances]`` per context vector; CSC contexts grouped by class."""

    def line(index: int, row: int) -> str:
        dist = [f"{d:.4f}" for d in found.distances[row].tolist()]
        return f"{index + 1}: {found.tokens[row]} {dist}"

    if len(found.ctx_shape) == 2:
        return [line(m, m) for m in range(found.ctx_shape[0])]
    n_cls, n_ctx = found.ctx_shape[:2]
    lines = []
    for c in range(n_cls):
        lines.append(f"Class {c + 1}:")
        lines.extend(line(m, c * n_ctx + m) for m in range(n_ctx))
    return lines


def interpret_checkpoint(path: str | Path, topk: int, backbone: str | None = None, weights: str = "") -> list[str]:
    """The report for a ``prompt_learner/model.pth.tar-N`` file, as lines (printed by ``interpret_prompt.py``);
    any backbone family (its own vocabulary and tokenizer)."""
    lines = [f"Return the top-{topk} matched words"]
    if backbone is None:
        backbone, weights = _run_backbone(path)
        if backbone is None:
            backbone = REFERENCE_BACKBONE
            lines.append(f"No run.json beside the checkpoint names its backbone; using {backbone} (pass --backbone)")
    lines.append(f"Backbone: {backbone}")
    adapter = adapter_for(load_clip(backbone, weights=weights))
    token_embedding = adapter.token_embedding.weight
    lines.append(f"Size of token embedding: {token_embedding.shape}")
    state = load_checkpoint(str(path))["state_dict"]
    if "ctx" not in state:
        raise UserKeyError(f'"{path}" has no learned context ("ctx" is not among {sorted(state)})')
    ctx = state["ctx"].float()
    lines.append(f"Size of context: {ctx.shape}")
    if prefix_matches(state, token_embedding, adapter.tokenizer) is False:
        lines.append(f"Warning: the checkpoint's token embeddings are not those of {backbone}; "
                     "the context was probably learned with another backbone")
    found = nearest_words(ctx, token_embedding, topk, adapter.tokenizer)
    lines.append(f"Size of distance matrix: {torch.Size([*ctx.shape[:-1], token_embedding.shape[0]])}")
    return lines + format_nearest(found)


def main(argv: list[str] | None = None) -> int:
    """``interpret_prompt.py FPATH TOPK [--backbone NAME]``, CoOp's arguments plus the backbone.

    Both files are read without running code from them (:mod:`vlprompt.io`); a refused or unreadable
    file is one line on stderr and exit status 2, as for ``train.py``."""
    parser = argparse.ArgumentParser(description="Nearest vocabulary words of each learned context vector.")
    parser.add_argument("fpath", type=str, help="path to the learned prompt (prompt_learner/model.pth.tar-N)")
    parser.add_argument("topk", type=int, help="select top-k similar words")
    parser.add_argument("--backbone", type=str, default=None,
                        help="CLIP the context was learned with (default: from the run's run.json, else RN50)")
    parser.add_argument("--weights", type=str, default="",
                        help="weights file for an open_clip --backbone without a pretrained tag (MODEL.BACKBONE.WEIGHTS)")
    args = parser.parse_args(argv)
    if not Path(args.fpath).is_file():
        print(f'error: no checkpoint file at "{args.fpath}"', file=sys.stderr)
        return 2

    def report() -> int:
        for text in interpret_checkpoint(args.fpath, args.topk, args.backbone, args.weights):
            print(text)
        return 0

    return run_cli(report, program="interpret_prompt.py")
