"""open_clip as the second backbone family: names and offline resolution, safe loading, the exact fast text
encoding on open_clip's text tower, refusal of SigLIP-style towers, and every trainer running on a tiny
random-weight open_clip model built from a model config (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import train_args

pytest.importorskip("open_clip")

import vlprompt.modeling.backbones.open_clip_family as ocf
from vlprompt.cli import main
from vlprompt.errors import UserError
from vlprompt.interpret import interpret_checkpoint
from vlprompt.io import UnsafeCheckpointError
from vlprompt.modeling import PromptLearner, PromptTextEncoder, adapter_for, create_clip, resolve_weights
from vlprompt.tiny_clip import TINY_OPEN_CLIP, build_tiny_open_clip, save_tiny_open_clip

NAME = f"open_clip:{TINY_OPEN_CLIP}"
CLASSNAMES = ["dog", "cat", "big_bird", "a_very_long_class_name_indeed"]


@pytest.fixture(autouse=True)
def no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("VLPROMPT_OPEN_CLIP_DIR", str(tmp_path / "open_clip_weights"))

    def forbidden(model, tag, folder):
        raise AssertionError(f"unexpected download of {model}@{tag}")

    monkeypatch.setattr(ocf, "_download_pretrained", forbidden)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(save_tiny_open_clip(tmp_path_factory.mktemp("oc") / "tiny_open_clip.pt", seed=0))


@pytest.fixture(scope="module")
def model(weights):
    return create_clip(backbone_cfg(NAME, weights)).model


def backbone_cfg(name: str, weights: str):
    from yacs.config import CfgNode as CN

    return CN({"MODEL": CN({"BACKBONE": CN({"NAME": name, "WEIGHTS": weights})})})


def _extra_config(tmp_path: Path, name: str, **text) -> str:
    """Register a tiny model config with other text-tower options (layer scale, SigLIP-style pooling)."""
    config = json.loads((ocf.CONFIG_DIR / f"{TINY_OPEN_CLIP}.json").read_text())
    config["text_cfg"].update(text)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    ocf.import_open_clip().add_model_config(path)
    return name


# ------------------------------------------------------------------------------------- names and files
def test_a_name_with_a_tag_is_found_offline_in_the_local_folder(tmp_path, monkeypatch, weights):
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    folder = tmp_path / "open_clip_weights"
    folder.mkdir()
    (folder / f"{TINY_OPEN_CLIP}@mytag.pt").write_bytes(Path(weights).read_bytes())
    assert resolve_weights(f"{NAME}@mytag") == folder / f"{TINY_OPEN_CLIP}@mytag.pt"
    clip = create_clip(f"{NAME}@mytag")
    assert clip.adapter.family == "open_clip" and clip.preprocess.size == 224


def test_offline_absent_weights_say_where_they_were_looked_for(monkeypatch):
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve_weights("open_clip:ViT-B-16@laion2b_s34b_b88k")
    message = str(info.value)
    assert "ViT-B-16@laion2b_s34b_b88k" in message and "VLPROMPT_OFFLINE" in message
    assert "VLPROMPT_OPEN_CLIP_DIR" in message and "MODEL.BACKBONE.WEIGHTS" in message


def test_online_download_is_kept_under_its_name_for_later_offline_runs(tmp_path, monkeypatch):
    calls = []

    def fake(model, tag, folder):
        calls.append((model, tag))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "open_clip_model.safetensors").write_bytes(b"weights")
        return folder / "open_clip_model.safetensors"

    monkeypatch.setattr(ocf, "_download_pretrained", fake)
    path = resolve_weights("open_clip:ViT-B-16@laion2b_s34b_b88k")
    assert calls == [("ViT-B-16", "laion2b_s34b_b88k")]
    assert path == tmp_path / "open_clip_weights" / "ViT-B-16@laion2b_s34b_b88k.safetensors"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the download cache is gone
    monkeypatch.setenv("VLPROMPT_OFFLINE", "1")
    assert resolve_weights("open_clip:ViT-B-16@laion2b_s34b_b88k") == path  # no second download


@pytest.mark.parametrize("name,expected", [
    ("open_clip:No-Such-Model@x", "not an open_clip model config"),
    ("open_clip:ViT-B-16@no_such_tag", "no pretrained tag"),
    ("open_clip:ViT-B-16", "names no weights"),
])
def test_bad_names_are_one_clear_error(name, expected):
    with pytest.raises(UserError, match=expected):
        resolve_weights(name)


def test_weights_that_would_run_code_are_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(UnsafeCheckpointError):
        create_clip(backbone_cfg(NAME, str(path)))


# ----------------------------------------------------------------------------------- the text tower
@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_fast_encoding_equals_the_straightforward_path_and_encode_text(model, position, csc):
    torch.manual_seed(0)
    learner = PromptLearner(CLASSNAMES, model, n_ctx=4, csc=csc, class_token_position=position, verbose=False)
    fast = PromptTextEncoder(model)
    plain = PromptTextEncoder(model, truncate=False, share_prefix=False)
    with torch.no_grad():
        ours = fast(learner(), learner.tokenized_prompts, learner.shared_prefix_length)
        reference = plain(learner(), learner.tokenized_prompts)
        assert (ours - reference).abs().max().item() <= 1e-5
        # the straightforward path is open_clip's own encode_text on token embeddings
        tokens = adapter_for(model).tokenizer(["a photo of a dog.", "a big bird"])
        direct = model.encode_text(tokens)
        assert (plain(model.token_embedding(tokens), tokens) - direct).abs().max().item() <= 1e-5


def test_shared_prefix_and_truncation_are_used_and_exact_with_layer_scale(tmp_path):
    name = _extra_config(tmp_path, "vlprompt-tiny-vit-ls", ls_init_value=0.5)
    model = build_tiny_open_clip(seed=1, model_name=name)
    learner = PromptLearner(CLASSNAMES, model, n_ctx=4, verbose=False)
    assert learner.shared_prefix_length == 5
    shared = PromptTextEncoder(model)
    plain = PromptTextEncoder(model, truncate=False, share_prefix=False)
    assert shared._can_share(5, adapter_for(model).eot_positions(learner.tokenized_prompts))
    learner.zero_grad()
    out = shared(learner(), learner.tokenized_prompts, learner.shared_prefix_length)
    out.sum().backward()
    grad = learner.ctx.grad.clone()
    learner.zero_grad()
    ref = plain(learner(), learner.tokenized_prompts)
    ref.sum().backward()
    assert (out - ref).abs().max().item() <= 1e-5
    assert (grad - learner.ctx.grad).abs().max().item() <= 1e-6 * grad.abs().max().item()  # float rounding


def test_siglip_style_text_towers_are_refused_with_the_reason(tmp_path):
    name = _extra_config(tmp_path, "vlprompt-tiny-siglip-like", no_causal_mask=True, pool_type="last")
    path = tmp_path / "siglip.pt"
    torch.save(build_tiny_open_clip(model_name=name).state_dict(), path)
    with pytest.raises(UserError, match="not causal or pools the 'last' token"):
        create_clip(backbone_cfg(f"open_clip:{name}", str(path)))


# -------------------------------------------------------------------------------------- every trainer
def _args(root, out, trainer, config, weights, *extra):
    flags = [arg for arg in extra if arg.startswith("--")]
    opts = [arg for arg in extra if not arg.startswith("--")]
    return train_args(root, out, trainer, config, "--seed", "1", *flags, "MODEL.BACKBONE.NAME", NAME,
                      "MODEL.BACKBONE.WEIGHTS", weights, "DATALOADER.NUM_WORKERS", "0", *opts)


TRAINERS = {
    "ZeroshotCLIP": ("trainers/CoOp/vit_b16.yaml", ["--eval-only"]),
    "ZeroshotCLIP2": ("trainers/CoOp/vit_b16.yaml", ["--eval-only"]),
    "CoOp": ("trainers/CoOp/vit_b16.yaml", ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1",
                                            "TRAINER.COOP.N_CTX", "4"]),
    "CoCoOp": ("trainers/CoCoOp/vit_b16_c4_ep10_batch1.yaml", ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1"]),
    "GenPT": ("trainers/GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml", ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"]),
    "TPT": ("trainers/TPT/vit_b16.yaml", ["TRAINER.TPT.N_VIEWS", "4", "TRAINER.TPT.SELECTION_P", "0.5"]),
    "LinearProbeCLIP": ("trainers/LinearProbeCLIP/vit_b16.yaml", ["DATASET.NUM_SHOTS", "2",
                                                                  "TRAINER.LINEAR_PROBE.NUM_STEP", "1"]),
}


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_every_trainer_runs_on_open_clip(pets_root, weights, tmp_path, trainer):
    config, extra = TRAINERS[trainer]
    out = tmp_path / trainer
    result = main(_args(pets_root, out, trainer, config, weights, *extra))
    assert 0.0 <= result.test_results["accuracy"] <= 100.0
    record = json.loads((out / "run.json").read_text())
    assert record["weights"]["architecture"] == f"open_clip {TINY_OPEN_CLIP}"
    if trainer == "CoOp":  # prompt interpretation reads the backbone and its weights from the run
        lines = interpret_checkpoint(out / "prompt_learner" / "model.pth.tar-1", 2)
        assert lines[1] == f"Backbone: {NAME}" and "Size of context: torch.Size([4, 64])" in lines
        assert not any("Warning" in line for line in lines)
