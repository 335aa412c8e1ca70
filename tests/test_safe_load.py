"""Weights and checkpoints that never run code: TorchScript archives read without ``torch.jit.load``
(exactly its state dict), crafted archives refused before anything runs, the trust opt-in, and CLIP
built from the safe reader giving the same logits as from ``torch.jit.load``."""

from __future__ import annotations

import logging
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from test_checkpoint import _RunsEval, _RunsShell  # pickles that run code: one definition for the suite
from torch import nn

import vlprompt.io
from vlprompt.clip_backbone import (
    InvalidClipCheckpointError,
    clear_clip_cache,
    import_clip,
    load_clip,
    load_clip_state_dict,
)
from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.errors import UserError
from vlprompt.io import (
    TRUST_ENV_VAR,
    NotACheckpointError,
    UnsafeCheckpointError,
    is_torchscript_archive,
    load_torch_file,
    read_torchscript_state_dict,
)
from vlprompt.tiny_clip import _trace, build_tiny_clip, save_tiny_clip

clip = import_clip()
VARIANTS = [(kind, half) for kind in ("vit", "rn") for half in (True, False)]


@pytest.fixture(autouse=True)
def _untrusted(monkeypatch):
    """Every test starts without the unsafe opt-in, whatever the caller's shell has set."""
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)
    clear_clip_cache()
    yield
    clear_clip_cache()


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """Traced tiny CLIPs (ViT and ModifiedResNet, fp16 as OpenAI ships them and fp32)."""
    folder = tmp_path_factory.mktemp("archives")
    return {(kind, half): save_tiny_clip(folder / f"{kind}_{half}.pt", kind=kind, fmt="torchscript", half=half)
            for kind, half in VARIANTS}


_REAL_JIT_LOAD = torch.jit.load  # kept before any test replaces it


def _reference(path: Path) -> dict[str, torch.Tensor]:
    """What torch's own loader gives (it runs the archive's code: only for files the tests made)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _REAL_JIT_LOAD(str(path), map_location="cpu").state_dict()


def assert_identical(ours: dict, reference: dict) -> None:
    """Same keys in the same order, same dtypes, shapes and strides, same bits."""
    assert list(ours) == list(reference)
    for key, value in reference.items():
        mine = ours[key]
        assert mine.dtype == value.dtype and mine.shape == value.shape and mine.stride() == value.stride(), key
        assert mine.device.type == "cpu" and not mine.requires_grad, key
        assert torch.equal(mine.reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8)), key


@pytest.fixture
def no_jit_load(monkeypatch):
    """Fail the test if anything calls torch.jit.load (the code-running loader)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", forbidden)


def rewrite_archive(source: Path, target: Path, change) -> Path:
    """Copy a zip archive, passing each record's (name, bytes) through ``change``."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            new.writestr(info.filename, change(info.filename, old.read(info)))
    return target


# ------------------------------------------------------------------------------ exactly jit's state dict
@pytest.mark.parametrize("kind,half", VARIANTS)
def test_traced_clip_archive_reads_exactly_as_jit_load(archives, kind, half, no_jit_load):
    path = archives[kind, half]
    assert is_torchscript_archive(path)
    ours = read_torchscript_state_dict(path)
    assert_identical(ours, _reference(path))
    assert ours["visual.conv1.weight"].dtype == (torch.float16 if half else torch.float32)
    assert ours["ln_final.weight"].dtype == torch.float32
    if kind == "rn":  # BatchNorm buffers, the int64 counter included
        assert ours["visual.bn1.num_batches_tracked"].dtype == torch.int64


class _Block(nn.Module):
    """Attributes of every kind a scripted module pickles: parameters, a None bias, buffers (float64 and
    BatchNorm's int64 counter), and plain attributes (a tensor, int list, dict, float, str) that
    ``state_dict`` leaves out."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3, bias=False)
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("scale", torch.tensor([2.0], dtype=torch.float64))
        self.mask = torch.ones(3, dtype=torch.bool)
        self.sizes: list[int] = [1, 2, 3]
        self.table: dict[str, torch.Tensor] = {"a": torch.zeros(2)}
        self.ratio = 0.5
        self.label = "block"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.proj(x)) * self.scale * self.ratio
        return y + self.table["a"].sum() + float(self.sizes[0]) + self.mask.float().sum()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(_Block(), nn.ReLU())
        self.head = nn.Parameter(torch.randn(3, 2).half())
        self.steps = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x)
        for step in self.steps:
            y = step(y)
        return y @ self.head.float()


def test_scripted_module_with_every_attribute_kind_reads_as_jit_load(tmp_path, no_jit_load):
    torch.manual_seed(0)
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated in torch 2.13
        torch.jit.script(_Net()).save(str(path))
    ours = read_torchscript_state_dict(path)
    assert_identical(ours, _reference(path))
    assert "blocks.0.mask" not in ours and "blocks.0.proj.bias" not in ours
    assert ours["blocks.0.scale"].dtype == torch.float64


def test_archive_saved_on_another_device_reads_on_the_cpu(archives, tmp_path, no_jit_load):
    """An archive traced on a GPU names cuda storages; it must read on a machine without one."""

    def on_cuda(name: str, data: bytes) -> bytes:
        if name.endswith("/data.pkl"):
            assert data.count(b"X\x03\x00\x00\x00cpu") == 1  # memoised once, then referenced
            return data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
        return data

    path = rewrite_archive(archives["vit", True], tmp_path / "cuda.pt", on_cuda)
    ours = read_torchscript_state_dict(path)
    assert_identical(ours, _reference(path))  # torch.jit.load(map_location="cpu")


def test_state_dict_files_load_with_weights_only(tiny_clip_files, monkeypatch):
    flags = []
    real_load = torch.load

    def spy(*args, **kwargs):
        flags.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = load_clip_state_dict(tiny_clip_files["rn"])
    assert "visual.attnpool.c_proj.weight" in state
    assert flags == [True]


# ------------------------------------------------------------------------------------ crafted archives
class _WritesOnLoad(nn.Module):
    """A module whose TorchScript ``__setstate__`` creates a file: ``torch.jit.load`` runs it while loading."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        # torch.from_file(shared=True) creates the file: any side effect would do.
        self.weight = state[0] + torch.from_file(state[1], shared=True, size=1, dtype=torch.uint8).sum() * 0
        self.marker = state[1]
        self.training = state[2]


@pytest.fixture
def crafted_clip(tmp_path) -> tuple[Path, Path]:
    """A complete tiny CLIP archive with a submodule whose __setstate__ writes ``marker``."""
    marker = tmp_path / "pwned"
    model = build_tiny_clip("vit")
    model.visual.payload = _WritesOnLoad(str(marker))
    path = tmp_path / "ViT-B-16.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trace(model, clip).save(str(path))
    assert not marker.exists()
    return path, marker


def test_crafted_setstate_archive_is_refused_and_never_run(crafted_clip, no_jit_load):
    path, marker = crafted_clip
    with pytest.raises(UnsafeCheckpointError) as info:
        read_torchscript_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "__setstate__" in message and f"{TRUST_ENV_VAR}=1" in message
    assert isinstance(info.value, UserError)
    for load in (load_clip, load_clip_state_dict):  # the paths MODEL.BACKBONE.NAME takes
        with pytest.raises(UnsafeCheckpointError):
            load(str(path))
    assert not marker.exists()


def test_crafted_archive_is_a_real_threat_for_jit_load(crafted_clip):
    """The control: torch's own loader does run the payload, which is why it is never used unasked."""
    path, marker = crafted_clip
    _reference(path)
    assert marker.exists()


def test_openai_name_resolving_to_a_crafted_archive_is_refused(crafted_clip, monkeypatch, no_jit_load):
    path, marker = crafted_clip
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(path.parent))
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    with pytest.raises(UnsafeCheckpointError, match="__setstate__"):
        load_clip("ViT-B/16")  # resolves to ViT-B-16.pt in VLPROMPT_CLIP_DIR
    assert not marker.exists()


@pytest.mark.parametrize("payload", [_RunsShell, _RunsEval])
def test_archive_pickle_with_a_foreign_global_is_refused(archives, tmp_path, payload, no_jit_load):
    if payload is _RunsShell and os.name != "posix":
        pytest.skip("os.system pickles as nt.system on Windows")
    marker = tmp_path / "pwned"
    evil = pickle.dumps(payload(marker), protocol=2)
    path = rewrite_archive(archives["rn", True], tmp_path / "RN50.pt",
                           lambda name, data: evil if name.endswith("/data.pkl") else data)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_clip(str(path))
    name = "posix.system" if payload is _RunsShell else "builtins.eval"
    assert name in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_archive_without_class_sources_is_refused(archives, tmp_path, no_jit_load):
    # Class names get mangled (clip/model/___torch_mangle_N.py) once a process has traced CLIP before,
    # so every class source is emptied.
    path = rewrite_archive(archives["vit", True], tmp_path / "stripped.pt",
                           lambda name, data: b"" if "/code/" in name and name.endswith(".py") else data)
    with pytest.raises(UnsafeCheckpointError, match=r"does not define its class __torch__\.clip\.model"):
        read_torchscript_state_dict(path)


def test_truncated_archive_is_a_clear_error(archives, tmp_path):
    whole = archives["vit", True].read_bytes()
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidClipCheckpointError) as info:
        load_clip(str(torn))
    assert str(torn) in str(info.value) and isinstance(info.value, UserError)


def test_a_torchscript_archive_is_not_a_prompt_checkpoint(archives):
    path = archives["vit", True]
    for load in (load_checkpoint, load_torch_file):
        with pytest.raises(NotACheckpointError, match="TorchScript archive.*MODEL.BACKBONE.NAME"):
            load(str(path))


# ------------------------------------------------------------------------------------------ trusting
def test_trust_opt_in_loads_a_refused_archive_with_jit_load(crafted_clip, monkeypatch, caplog):
    path, marker = crafted_clip
    monkeypatch.setenv(TRUST_ENV_VAR, "1")
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        state = read_torchscript_state_dict(path)
    assert "visual.payload.weight" in state and marker.exists()  # the user asked for it
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and str(path) in warning[0] and "torch.jit.load" in warning[0]
    assert "__setstate__" in warning[0]


def test_trust_opt_in_still_reads_safe_archives_safely(archives, monkeypatch, no_jit_load, caplog):
    monkeypatch.setenv(TRUST_ENV_VAR, "1")
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        state = read_torchscript_state_dict(archives["rn", False])
    assert "visual.conv1.weight" in state and not caplog.records


def test_torch_before_2_6_reads_plain_files_without_an_allow_list(tiny_clip_files, monkeypatch):
    monkeypatch.setattr(vlprompt.io, "_GLOBAL_ALIASES_SUPPORTED", False)
    assert "text_projection" in load_torch_file(tiny_clip_files["vit"])


# --------------------------------------------------------------------------- the model is the same one
@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_clip_from_safe_weights_gives_the_same_logits_as_from_jit_load(archives, kind):
    path = archives[kind, True]
    before = clip.model.build_model(dict(_reference(path))).eval()  # what load_clip did before
    after = load_clip(str(path))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=generator)
    tokens = clip.tokenize(["a photo of a cat.", "a red car"])
    with torch.no_grad():
        expected = [t.float() for t in before.float()(images, tokens)]
        got = [t.float() for t in after.float()(images, tokens)]
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
