"""Nearest vocabulary words of learned contexts: exact words come back at distance 0, CSC per class, the
backbone from the run (or given), and the command line as CoOp's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vlprompt.clip_backbone import load_clip
from vlprompt.interpret import format_nearest, interpret_checkpoint, nearest_words
from vlprompt.prompts import tokenize

REPO = Path(__file__).resolve().parent.parent


def word_vectors(table: torch.Tensor, words: str) -> torch.Tensor:
    ids = tokenize(words)[0, 1 : 1 + len(words.split())]
    return table[ids].clone()


@pytest.fixture(scope="module")
def table(tiny_vit) -> torch.Tensor:
    return load_clip(tiny_vit).token_embedding.weight.detach().float()


def test_words_come_back_exactly_and_match_a_full_sort(table):
    ctx = word_vectors(table, "a photo of a")
    ctx[1] += 0.01 * torch.randn(ctx.shape[1], generator=torch.Generator().manual_seed(0))
    found = nearest_words(ctx, table, topk=5)
    assert [row[0] for row in found.tokens] == ["a</w>", "photo</w>", "of</w>", "a</w>"]
    assert found.distances[[0, 2, 3], 0].abs().max() < 1e-3 and found.distances[1, 0] > 0
    reference = torch.cdist(ctx, table)  # CoOp's computation: full distance matrix, argsort
    expected = torch.argsort(reference, dim=1)[:, :5]
    assert torch.equal(found.token_ids, expected)
    assert torch.allclose(found.distances, reference.gather(1, expected))
    lines = format_nearest(found)
    # CoOp's line format; torch.cdist's matmul form gives ~1e-4 rather than 0 for an exact word
    assert re.fullmatch(r"1: \['a</w>'(, '[^']+'){4}\] \['0\.000\d'(, '\d\.\d{4}'){4}\]", lines[0])


def test_class_specific_contexts_are_decoded_per_class(table):
    ctx = torch.stack([word_vectors(table, "red dog"), word_vectors(table, "small cat"), word_vectors(table, "big car")])
    found = nearest_words(ctx, table, topk=1)
    lines = [re.sub(r"'0\.000\d'", "'0'", line) for line in format_nearest(found)]
    assert lines == [
        "Class 1:", "1: ['red</w>'] ['0']", "2: ['dog</w>'] ['0']",
        "Class 2:", "1: ['small</w>'] ['0']", "2: ['cat</w>'] ['0']",
        "Class 3:", "1: ['big</w>'] ['0']", "2: ['car</w>'] ['0']",
    ]


def test_width_mismatch_names_the_backbone_problem(table):
    with pytest.raises(ValueError, match="width 512 but the token embeddings 64.*another CLIP backbone"):
        nearest_words(torch.zeros(4, 512), table, topk=3)


def write_run(folder: Path, table: torch.Tensor, backbone: str | None, words: str = "a photo of a") -> Path:
    """A CoOp run folder: prompt_learner/model.pth.tar-1 (+ run.json naming the backbone)."""
    path = folder / "prompt_learner" / "model.pth.tar-1"
    path.parent.mkdir(parents=True)
    sos = tokenize("")[0, 0]
    state = {"ctx": word_vectors(table, words).half(), "token_prefix": table[sos].reshape(1, 1, -1).repeat(3, 1, 1).half()}
    torch.save({"state_dict": state, "epoch": 1}, path)
    if backbone is not None:
        (folder / "run.json").write_text(json.dumps({"backbone": backbone}))
    return path


def test_command_line_uses_the_runs_backbone(tiny_vit, table, tmp_path):
    path = write_run(tmp_path / "run", table, backbone=tiny_vit)
    result = subprocess.run([sys.executable, str(REPO / "interpret_prompt.py"), str(path), "2"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:5] == ["Return the top-2 matched words", f"Backbone: {tiny_vit}",
                         "Size of token embedding: torch.Size([49408, 64])", "Size of context: torch.Size([4, 64])",
                         "Size of distance matrix: torch.Size([4, 49408])"]
    assert [line.split("'")[1] for line in lines[5:]] == ["a</w>", "photo</w>", "of</w>", "a</w>"]


def test_another_backbone_is_flagged(tiny_clip_files, table, tmp_path):
    path = write_run(tmp_path / "run", table, backbone=str(tiny_clip_files["vit"]))
    lines = interpret_checkpoint(path, 1, backbone=str(tiny_clip_files["rn"]))
    assert any(line.startswith("Warning: the checkpoint's token embeddings are not those of") for line in lines)
    assert not any("Warning" in line for line in interpret_checkpoint(path, 1))


def test_without_run_record_the_reference_backbone_is_used(tiny_vit, table, tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(tiny_vit, weights / "RN50.pt")  # stands in for OpenAI's RN50 file
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(weights))
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    path = write_run(tmp_path / "run", table, backbone=None, words="a dog")
    lines = interpret_checkpoint(path, 1)
    assert "using RN50 (pass --backbone)" in lines[1] and lines[2] == "Backbone: RN50"
    assert [line.split("'")[1] for line in lines[-2:]] == ["a</w>", "dog</w>"]


def test_missing_file_is_a_clear_error(tmp_path):
    from vlprompt.interpret import main

    assert main([str(tmp_path / "nope.pth.tar-1"), "3"]) == 2
    assert os.listdir(tmp_path) == []


def test_a_crafted_backbone_archive_is_refused_in_one_line(tiny_vit, table, tmp_path):
    """``--backbone`` takes any file: a TorchScript archive carrying code that runs on load is refused
    before anything runs, as one error line and exit status 2."""
    from test_safe_load import _WritesOnLoad  # as conftest's helpers are imported: same module object

    from vlprompt.clip_backbone import import_clip
    from vlprompt.tiny_clip import _trace, build_tiny_clip

    marker = tmp_path / "pwned"
    model = build_tiny_clip("vit")
    model.payload = _WritesOnLoad(str(marker))
    archive = tmp_path / "RN50.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trace(model, import_clip()).save(str(archive))
    path = write_run(tmp_path / "run", table, backbone=tiny_vit)
    result = subprocess.run([sys.executable, str(REPO / "interpret_prompt.py"), str(path), "2", "--backbone", str(archive)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f'interpret_prompt.py: error: Refusing to read the TorchScript archive "{archive}"')
    assert "__setstate__" in line and "VLPROMPT_TRUST_CHECKPOINTS=1" in line
    assert not marker.exists()
