"""CLIP weights resolution, checkpoint formats, downloads (never real ones), precision, and the tiny CLIPs."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch

from vlprompt import clip_backbone
from vlprompt.clip_backbone import (
    ClipWeightsNotFoundError,
    InvalidClipCheckpointError,
    apply_precision,
    clear_clip_cache,
    clip_embed_dim,
    clip_input_resolution,
    clip_model_urls,
    clip_text_width,
    clip_weights_dir,
    import_clip,
    load_clip,
    load_clip_cached,
    load_clip_state_dict,
    resolve_clip_weights,
)
from vlprompt.tiny_clip import TINY_SPECS, build_tiny_clip, save_tiny_clip

clip = import_clip()
KINDS = ("vit", "rn")
VARIANTS = [(kind, fmt, half) for kind in KINDS for fmt in ("state_dict", "torchscript") for half in (True, False)]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every test runs with an empty weights folder setting cleared and a download that fails the test."""
    monkeypatch.delenv("VLPROMPT_CLIP_DIR", raising=False)
    monkeypatch.delenv("VLPROMPT_OFFLINE", raising=False)

    def forbidden(url, dest):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(clip_backbone, "_download_file", forbidden)
    clear_clip_cache()
    yield
    clear_clip_cache()


@pytest.fixture(scope="module")
def originals() -> dict[str, torch.nn.Module]:
    return {kind: build_tiny_clip(kind, seed=0) for kind in KINDS}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {
        (kind, fmt, half): save_tiny_clip(folder / f"{kind}_{fmt}_{half}.pt", kind=kind, fmt=fmt, half=half)
        for kind, fmt, half in VARIANTS
    }


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 224, 224, generator=generator)
    tokens = clip.tokenize(["a photo of a cat.", "a dog", "a red car on a long road"])
    return images, tokens


def structured_images(n: int = 6) -> torch.Tensor:
    """Distinct images (a colour, stripes at an angle, a little noise), like the synthetic datasets'."""
    generator = torch.Generator().manual_seed(1)
    axis = torch.arange(224, dtype=torch.float32)
    images = []
    for i in range(n):
        colour = torch.rand(3, 1, 1, generator=generator) * 2 - 1
        stripes = torch.sin(axis[:, None] * (0.05 + 0.05 * i) + axis[None, :] * 0.03 * i)
        images.append(colour + 0.5 * stripes + 0.1 * torch.randn(3, 224, 224, generator=generator))
    return torch.stack(images)


def features(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images).float(), model.encode_text(tokens).float()


def fp16_rounded(model):
    """The fp32 model whose weights went through clip's fp16 conversion, as build_model does."""
    rounded = copy.deepcopy(model)
    clip.model.convert_weights(rounded)
    return rounded.float()


# ---------------------------------------------------------------- loading: formats and round trips


@pytest.mark.parametrize("kind,fmt,half", VARIANTS)
def test_load_clip_round_trip_equals_original(files, originals, inputs, kind, fmt, half):
    model = load_clip(str(files[kind, fmt, half]), device="cpu")
    assert isinstance(model, clip.model.CLIP)
    assert not model.training
    # build_model keeps OpenAI's mixed precision: conv/linear/attention weights fp16, layer norms fp32.
    assert model.visual.conv1.weight.dtype == torch.float16
    assert model.ln_final.weight.dtype == torch.float32

    model, prec = apply_precision(model, "fp32", "cpu")
    assert prec == "fp32"
    image_feats, text_feats = features(model, *inputs)
    # Exactly the original after the same fp16 rounding of its weights...
    ref_image, ref_text = features(fp16_rounded(originals[kind]), *inputs)
    torch.testing.assert_close(image_feats, ref_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_feats, ref_text, rtol=0, atol=1e-6)
    # ...and the fp32 original up to that rounding.
    orig_image, orig_text = features(originals[kind], *inputs)
    assert (image_feats - orig_image).abs().max() < 5e-3 * orig_image.abs().max()
    assert (text_feats - orig_text).abs().max() < 5e-3 * orig_text.abs().max()


@pytest.mark.parametrize("kind,fmt,half", VARIANTS)
def test_saved_files_have_the_requested_format_and_dtype(files, kind, fmt, half):
    path = files[kind, fmt, half]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["visual.conv1.weight"].dtype == (torch.float16 if half else torch.float32)
    assert state["ln_final.weight"].dtype == torch.float32  # convert_weights leaves layer norms alone
    assert state["token_embedding.weight"].shape == (49408, 64)
    assert not list(path.parent.glob("*.part"))


def test_loading_a_torchscript_file_emits_no_warnings(files):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_clip(str(files["rn", "torchscript", True]))
    assert clip_input_resolution(model) == 224


def test_wrapped_and_data_parallel_state_dicts_load(tmp_path, files):
    plain = load_clip_state_dict(files["vit", "state_dict", True])
    torch.save({"state_dict": plain, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"model": {f"module.{k}": v for k, v in plain.items()}}, tmp_path / "parallel.pth")
    for name in ("wrapped.pth", "parallel.pth"):
        loaded = load_clip_state_dict(tmp_path / name)
        assert loaded.keys() == plain.keys()
        assert all(torch.equal(loaded[k], plain[k]) for k in plain)


def test_a_file_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path):
    text_file = tmp_path / "notes.pt"
    text_file.write_text("not a checkpoint\n")
    with pytest.raises(InvalidClipCheckpointError, match="is not a CLIP checkpoint") as info:
        load_clip(str(text_file))
    assert str(text_file) in str(info.value)

    prompt_ckpt = tmp_path / "model.pth.tar-2"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 64)}, "epoch": 2}, prompt_ckpt)
    with pytest.raises(InvalidClipCheckpointError) as info:
        load_clip(str(prompt_ckpt))
    message = str(info.value)
    assert str(prompt_ckpt) in message and "text_projection" in message and "MODEL.INIT_WEIGHTS" in message


# ---------------------------------------------------------------- name resolution


def test_openai_name_resolves_in_vlprompt_clip_dir(tmp_path, monkeypatch, originals, inputs):
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))
    save_tiny_clip(tmp_path / "RN50.pt", kind="rn")  # clip's file name for RN50
    assert clip_weights_dir() == tmp_path
    assert resolve_clip_weights("RN50") == tmp_path / "RN50.pt"

    model, _ = apply_precision(load_clip("RN50"), "fp32", "cpu")
    ref_image, ref_text = features(fp16_rounded(originals["rn"]), *inputs)
    image_feats, text_feats = features(model, *inputs)
    torch.testing.assert_close(image_feats, ref_image, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_feats, ref_text, rtol=0, atol=1e-6)


def test_file_names_follow_clip_urls():
    urls = clip_model_urls()
    assert set(urls) == {"RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                         "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"}
    assert urls["ViT-B/16"].endswith("/ViT-B-16.pt")
    assert urls["ViT-L/14@336px"].endswith("/ViT-L-14-336px.pt")


def test_default_dir_is_clips_cache_and_user_dirs_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert clip_weights_dir() == tmp_path / ".cache" / "clip"
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", "~/weights")
    assert clip_weights_dir() == tmp_path / "weights"


def test_checkpoint_paths_absolute_relative_and_home(tmp_path, monkeypatch, files):
    source = files["vit", "state_dict", True]
    assert resolve_clip_weights(str(source)) == source
    monkeypatch.chdir(source.parent)
    assert resolve_clip_weights(source.name) == Path(source.name)
    monkeypatch.setenv("HOME", str(source.parent))
    assert resolve_clip_weights(f"~/{source.name}") == source


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ClipWeightsNotFoundError) as info:
        resolve_clip_weights("ViT-H/99")
    message = str(info.value)
    assert "ViT-H/99" in message
    for name in ("RN50", "RN50x64", "ViT-B/16", "ViT-L/14@336px"):
        assert name in message
    assert isinstance(info.value, FileNotFoundError)


# ---------------------------------------------------------------- downloads (all faked)


def test_offline_and_absent_raises_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    with pytest.raises(ClipWeightsNotFoundError) as info:  # the autouse fixture fails on any download
        load_clip("ViT-B/16")
    message = str(info.value)
    assert str(tmp_path / "ViT-B-16.pt") in message
    assert f"in {tmp_path}" in message
    for hint in ("VLPROMPT_CLIP_DIR", "VLPROMPT_OFFLINE", "MODEL.BACKBONE.NAME", "copy ViT-B-16.pt"):
        assert hint in message
    assert list(tmp_path.iterdir()) == []


def fake_download(calls: list, payload: bytes):
    def download(url, dest):
        calls.append((url, Path(dest)))
        Path(dest).write_bytes(payload)

    return download


@pytest.mark.parametrize("offline_value", [None, "0", ""])
def test_online_and_absent_downloads_checks_and_keeps_the_file(tmp_path, monkeypatch, files, offline_value):
    if offline_value is not None:
        monkeypatch.setenv("VLPROMPT_OFFLINE", offline_value)
    weights_dir = tmp_path / "new" / "clip"  # created on demand
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(weights_dir))
    payload = files["vit", "state_dict", True].read_bytes()
    url = f"https://example.invalid/clip/models/{hashlib.sha256(payload).hexdigest()}/ViT-B-16.pt"
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", url)
    calls: list = []
    monkeypatch.setattr(clip_backbone, "_download_file", fake_download(calls, payload))

    model = load_clip("ViT-B/16")
    assert [c[0] for c in calls] == [url]
    assert calls[0][1].parent == weights_dir  # written next to the target, then renamed
    assert [p.name for p in weights_dir.iterdir()] == ["ViT-B-16.pt"]
    assert (weights_dir / "ViT-B-16.pt").read_bytes() == payload
    assert clip_embed_dim(model) == 64

    load_clip("ViT-B/16")  # present now: no second download
    assert len(calls) == 1


def test_sha_mismatch_raises_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))
    calls: list = []
    monkeypatch.setattr(clip_backbone, "_download_file", fake_download(calls, b"tampered bytes"))
    with pytest.raises(ClipWeightsNotFoundError, match="SHA256") as info:
        resolve_clip_weights("RN50")
    assert [c[0] for c in calls] == [clip_model_urls()["RN50"]]  # the real URL, never fetched for real
    assert str(tmp_path / "RN50.pt") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_raises_with_the_reason_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))

    def unreachable(url, dest):
        Path(dest).write_bytes(b"partial")
        raise OSError("network is unreachable")

    monkeypatch.setattr(clip_backbone, "_download_file", unreachable)
    with pytest.raises(ClipWeightsNotFoundError) as info:
        resolve_clip_weights("ViT-B/32")
    message = str(info.value)
    assert "network is unreachable" in message and "ViT-B-32.pt" in message and "VLPROMPT_CLIP_DIR" in message
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- cache, precision, helpers


def test_load_clip_cached_reuses_until_the_file_changes(tmp_path):
    path = save_tiny_clip(tmp_path / "tiny.pt", kind="vit", seed=0)
    first = load_clip_cached(str(path))
    assert load_clip_cached(str(path)) is first
    assert load_clip_cached(str(path), torch.device("cpu")) is first

    save_tiny_clip(path, kind="vit", seed=1)  # atomic rewrite: a new file under the same name
    second = load_clip_cached(str(path))
    assert second is not first
    assert not torch.equal(second.text_projection, first.text_projection)
    assert load_clip_cached(str(path)) is second


def test_apply_precision_values():
    model = build_tiny_clip("vit")
    clip.model.convert_weights(model)
    with pytest.warns(UserWarning, match="fp16.*CPU.*fp32"):
        model, prec = apply_precision(model, "fp16", "cpu")
    assert prec == "fp32" and model.visual.conv1.weight.dtype == torch.float32

    model, prec = apply_precision(model, "fp16", "cuda")  # device only decides; nothing is moved
    assert prec == "fp16" and model.visual.conv1.weight.dtype == torch.float16

    for prec_in in ("fp32", "amp"):
        model, prec = apply_precision(model, prec_in, torch.device("cpu"))
        assert prec == prec_in
        assert {p.dtype for p in model.parameters()} == {torch.float32}

    model, prec = apply_precision(model, "bf16", "cpu")
    assert prec == "bf16" and {p.dtype for p in model.parameters()} == {torch.bfloat16}

    with pytest.raises(ValueError, match="fp16, fp32, amp, bf16"):
        apply_precision(model, "fp64", "cpu")


def test_size_helpers(originals):
    assert clip_input_resolution(originals["vit"]) == 224
    assert clip_text_width(originals["vit"]) == 64
    assert clip_embed_dim(originals["rn"]) == 64


# ---------------------------------------------------------------- tiny CLIPs


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_clip_is_deterministic_and_leaves_the_global_rng_alone(kind, originals):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_clip(kind, seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    state, state_again = originals[kind].state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    other = build_tiny_clip(kind, seed=1)
    assert not torch.equal(other.text_projection, again.text_projection)
    assert {p.dtype for p in again.parameters()} == {torch.float32}


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_clip_heads_match_what_build_model_infers(kind, originals):
    spec = TINY_SPECS[kind]
    assert spec["vocab_size"] == 49408
    assert spec["transformer_heads"] == spec["transformer_width"] // 64
    assert originals[kind].transformer.resblocks[0].attn.num_heads == 1


@pytest.mark.parametrize("kind,max_mean_cosine", [("vit", 0.6), ("rn", 0.97)])
def test_tiny_clip_image_features_differ_between_images(kind, max_mean_cosine, originals):
    # With clip's own initialisation this mean is above 0.99 (rn: 1.000): every image looks the same.
    images = structured_images()
    with torch.no_grad():
        feats = originals[kind].encode_image(images)
    feats = feats / feats.norm(dim=-1, keepdim=True)
    cosine = feats @ feats.t()
    off_diagonal = cosine[~torch.eye(len(images), dtype=torch.bool)]
    assert off_diagonal.mean() < max_mean_cosine


def test_save_tiny_clip_rejects_unknown_values(tmp_path):
    with pytest.raises(ValueError, match="state_dict, torchscript"):
        save_tiny_clip(tmp_path / "x.pt", fmt="onnx")
    with pytest.raises(ValueError, match="vit, rn"):
        build_tiny_clip("convnext")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- importing clip


def test_import_clip_without_pkg_resources(monkeypatch):
    """setuptools>=82 has no pkg_resources; clip must still import (through the stand-in)."""
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # makes `import pkg_resources` fail
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = import_clip()
    assert fresh is not clip and hasattr(fresh.model, "build_model")
    assert fresh.tokenize("a dog").shape == (1, 77)
    assert hasattr(sys.modules["pkg_resources"].packaging.version, "parse")


# ---------------------------------------------------------------- which weights ran

# OpenAI's released configurations, as clip.model.CLIP arguments (vision layers, vision width, patch,
# resolution, embedding size, text width, text heads).
OPENAI_SPECS = {
    "RN50": ((3, 4, 6, 3), 64, None, 224, 1024, 512, 8),
    "RN101": ((3, 4, 23, 3), 64, None, 224, 512, 512, 8),
    "RN50x4": ((4, 6, 10, 6), 80, None, 288, 640, 640, 10),
    "RN50x16": ((6, 8, 18, 8), 96, None, 384, 768, 768, 12),
    "RN50x64": ((3, 15, 36, 10), 128, None, 448, 1024, 1024, 16),
    "ViT-B/32": (12, 768, 32, 224, 512, 512, 8),
    "ViT-B/16": (12, 768, 16, 224, 512, 512, 8),
    "ViT-L/14": (24, 1024, 14, 224, 768, 768, 12),
    "ViT-L/14@336px": (24, 1024, 14, 336, 768, 768, 12),
}


@pytest.mark.parametrize("name", list(OPENAI_SPECS))
def test_architecture_of_every_openai_release_is_recognised(name):
    layers, width, patch, resolution, embed, text_width, heads = OPENAI_SPECS[name]
    with torch.device("meta"):  # shapes only: no memory, no time
        model = clip.model.CLIP(embed, resolution, layers, width, patch, 77, 49408, text_width, heads, 12)
    assert clip_backbone.clip_architecture(model.state_dict()) == name


def test_architecture_of_other_weights_is_described(files):
    vit = load_clip_state_dict(files["vit", "state_dict", True])
    rn = load_clip_state_dict(files["rn", "torchscript", True])
    assert clip_backbone.clip_architecture(vit) == "ViT width 64, 2 layers, patch 16, 224 px"
    assert clip_backbone.clip_architecture(rn) == "ResNet width 16, blocks 1-1-1-1, 224 px"


def test_loaded_weights_name_the_file_its_sha256_and_architecture(files, caplog):
    path = files["rn", "torchscript", False]
    with caplog.at_level(logging.INFO, logger="vlprompt"):
        load_clip_cached(str(path))
        load_clip_cached(str(path))  # a cached model is still reported, for the run using it
    info = clip_backbone.loaded_weights(str(path))
    assert info.as_record() == {
        "file": str(path.absolute()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "architecture": "ResNet width 16, blocks 1-1-1-1, 224 px",
    }
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"CLIP weights: {path.absolute()} (ResNet width 16, blocks 1-1-1-1, 224 px, sha256 {info.sha256})"] * 2
    assert clip_backbone.loaded_weights(str(path.with_name("never-loaded.pt"))) is None


def test_bundled_weights_are_recorded_by_name():
    clip_backbone.load_clip("micro-clip")
    info = clip_backbone.loaded_weights("micro-clip")
    assert info.file == "micro-clip" and len(info.sha256) == 64


def test_weights_of_another_architecture_than_named_are_warned_about(tmp_path, monkeypatch, files, caplog):
    # A ResNet file under ViT-B/16's file name, passed as a path.
    renamed = tmp_path / "ViT-B-16.pt"
    renamed.write_bytes(files["rn", "state_dict", True].read_bytes())
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        load_clip(str(renamed))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(renamed) in warning and "named ViT-B/16" in warning and "ResNet width 16" in warning

    # A ViT file standing in for RN50 in the weights folder, asked for by name.
    caplog.clear()
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))
    (tmp_path / "RN50.pt").write_bytes(files["vit", "torchscript", True].read_bytes())
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        load_clip("RN50")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "named RN50" in warning and "ViT width 64, 2 layers, patch 16, 224 px" in warning

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        load_clip(str(files["vit", "state_dict", True]))  # a name that claims nothing: no warning
    assert not caplog.records


def test_run_record_and_log_say_which_engine_and_weights_ran(pets_root, files, tmp_path):
    from conftest import train_args

    from vlprompt.cli import main

    weights = tmp_path / "ViT-B-16.pt"  # really a tiny ResNet archive
    weights.write_bytes(files["rn", "torchscript", True].read_bytes())
    out = tmp_path / "zs"
    main(train_args(pets_root, out, "ZeroshotCLIP", "trainers/CoOp/rn50.yaml", "--eval-only",
                    "MODEL.BACKBONE.NAME", str(weights), "DATALOADER.NUM_WORKERS", "0"))
    record = json.loads((out / "run.json").read_text())
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["schema"] == 3 and record["engine"] == "builtin"
    assert record["weights"] == {"file": str(weights), "sha256": sha256,
                                 "architecture": "ResNet width 16, blocks 1-1-1-1, 224 px"}
    assert record["backbone"] == str(weights) and record["metrics"]["accuracy"] >= 0  # the rest as before
    log = (out / "log.txt").read_text()
    assert "(engine: builtin)" in log
    assert f"CLIP weights: {weights} (ResNet width 16, blocks 1-1-1-1, 224 px, sha256 {sha256})" in log
    assert f'Warning: The CLIP weights "{weights}" are named ViT-B/16 but hold ResNet width 16' in log
