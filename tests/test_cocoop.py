"""CoCoOp: logits and gradients against CoCoOp's per-image loop computed with clip's own encode_text,
training, base-to-new evaluation from a saved checkpoint, reference checkpoints, and its yamls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import train_args
from test_coop import FAST, WIDTH, build, cocoop_state, coop_state, write_dassl_checkpoint
from yacs.config import CfgNode as CN

from vlprompt.cli import main
from vlprompt.prompt_trainer import CheckpointMismatchError
from vlprompt.prompts import tokenize
from vlprompt.tiny_clip import build_tiny_clip
from vlprompt.trainers.cocoop import CoCoOpCLIP

CLASSNAMES = ["abyssinian", "american_bulldog", "great pyrenees dog", "x", "newfoundland"]
CONFIG = "trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
META_NET = ["meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"]


def cocoop_cfg(max_prompts: int = 0, n_ctx: int = 4, ctx_init: str = "") -> CN:
    return CN({"N_CTX": n_ctx, "CTX_INIT": ctx_init, "PREC": "fp32", "MAX_PROMPTS": max_prompts})


def reference_loop_logits(clip_model, learner, image_features: torch.Tensor) -> torch.Tensor:
    """CoCoOp's forward the straightforward way: for each image, its context ``ctx + meta_net(feature)`` is
    written into the prompts "X X X X <class>." at clip's token-embedding output, and clip's own
    ``encode_text`` runs all 77 positions; logits = scale · feature · normalised text features."""
    n_ctx = learner.n_ctx
    tokens = tokenize([f"{' '.join(['X'] * n_ctx)} {name.replace('_', ' ')}." for name in CLASSNAMES])
    logits = []
    for feature in image_features:
        context = learner.ctx + learner.meta_net(feature)

        def inject(module, inputs, output, context=context):
            output = output.clone()
            output[:, 1 : 1 + n_ctx] = context
            return output

        handle = clip_model.token_embedding.register_forward_hook(inject)
        try:
            text = clip_model.encode_text(tokens)
        finally:
            handle.remove()
        text = text / text.norm(dim=-1, keepdim=True)
        logits.append(clip_model.logit_scale.exp() * feature @ text.t())
    return torch.stack(logits)


@pytest.fixture(scope="module")
def clip_model():
    return build_tiny_clip("vit", seed=0).float().eval().requires_grad_(False)  # frozen, as in training


@pytest.mark.parametrize("max_prompts, share_prefix", [(0, True), (0, False), (3, True), (10, True), (7, False)])
def test_logits_and_gradients_equal_the_per_image_reference_loop(clip_model, max_prompts, share_prefix):
    torch.manual_seed(0)
    model = CoCoOpCLIP(CLASSNAMES, clip_model, cocoop_cfg(max_prompts))
    model.text_encoder.share_prefix = share_prefix
    learner = model.prompt_learner
    with torch.no_grad():  # a meta-net that really shifts the context per image
        for param in learner.meta_net.parameters():
            param.normal_(std=0.5)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 3, 1, 4])
    with torch.no_grad():
        features = model.image_encoder(images)
        features = features / features.norm(dim=-1, keepdim=True)

    results = []
    for compute in (lambda: model.logits_from_features(features),
                    lambda: reference_loop_logits(clip_model, learner, features)):
        learner.zero_grad()
        logits = compute()
        F.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), {k: p.grad.clone() for k, p in learner.named_parameters()}))
    (ours, our_grads), (reference, reference_grads) = results
    assert ours.shape == (4, len(CLASSNAMES))
    assert (ours - reference).abs().max().item() <= 1e-4
    assert (ours[0] - ours[1]).abs().max() > 1e-3  # the per-image contexts differ
    assert set(our_grads) == {"ctx", *(k.removeprefix("prompt_learner.") for k in META_NET)}
    for name, grad in reference_grads.items():
        assert grad.abs().sum() > 0
        assert (our_grads[name] - grad).abs().max().item() <= 1e-5 * max(1.0, grad.abs().max().item()), name


def test_model_returns_loss_in_training_and_logits_in_eval(clip_model):
    model = CoCoOpCLIP(CLASSNAMES, clip_model, cocoop_cfg())
    images = torch.randn(2, 3, 224, 224)
    labels = torch.tensor([1, 2])
    model.prompt_learner.eval()
    with torch.no_grad():
        logits = model(images)
    model.prompt_learner.train()
    loss = model(images, labels)
    assert logits.shape == (2, len(CLASSNAMES)) and loss.dim() == 0
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


def test_meta_net_shapes_and_fp16_as_in_cocoop():
    from vlprompt.clip_backbone import import_clip

    half = build_tiny_clip("vit", seed=0)
    import_clip().model.convert_weights(half)
    model = CoCoOpCLIP(CLASSNAMES, half, cocoop_cfg(ctx_init="a photo of a"))
    state = model.prompt_learner.state_dict()
    vis_dim = half.visual.output_dim
    assert [(k, tuple(v.shape), v.dtype) for k, v in state.items()] == [
        ("ctx", (4, WIDTH), torch.float16),
        ("token_prefix", (5, 1, WIDTH), torch.float16),
        ("token_suffix", (5, 72, WIDTH), torch.float16),
        ("meta_net.linear1.weight", (vis_dim // 16, vis_dim), torch.float16),
        ("meta_net.linear1.bias", (vis_dim // 16,), torch.float16),
        ("meta_net.linear2.weight", (WIDTH, vis_dim // 16), torch.float16),
        ("meta_net.linear2.bias", (WIDTH,), torch.float16),
    ]


# --------------------------------------------------------------------------------------------- training
def cocoop_args(root, out, tiny_vit, *extra, epochs=1, flags=()):
    return train_args(root, out, "CoCoOp", CONFIG, "--seed", "1", *flags, "MODEL.BACKBONE.NAME", tiny_vit,
                      "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "2", "TRAINER.COCOOP.PREC", "fp32",
                      *FAST, *extra)


def test_training_lowers_the_loss_and_changes_only_prompt_parameters(pets_root, tiny_vit, tmp_path):
    trainer = build(pets_root, tmp_path, tiny_vit, "TRAINER.COCOOP.PREC", "fp32", "DATALOADER.TRAIN_X.BATCH_SIZE",
                    "4", trainer="CoCoOp", config=CONFIG)
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # no LR step inside forward_backward
    for group in trainer.optim.param_groups:
        group["lr"] = 0.05
    losses = [trainer.forward_backward(batch)["loss"] for _ in range(12)]
    assert losses[-1] < losses[0] - 0.05
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"prompt_learner.ctx", *(f"prompt_learner.{k}" for k in META_NET)}


def test_base_to_new_train_save_and_eval_only(pets_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "train_base"
    trained = main(cocoop_args(pets_root, out, tiny_vit, "DATASET.SUBSAMPLE_CLASSES", "base"))
    printed = capsys.readouterr().out
    assert "SUBSAMPLE BASE CLASSES!" in printed and "Finish training" in printed
    path = out / "prompt_learner" / "model.pth.tar-1"
    checkpoint = torch.load(path, map_location="cpu")  # as the original Dassl/CoCoOp loads it
    base = 3  # ceil(5 / 2)
    assert [(k, tuple(v.shape), v.dtype) for k, v in checkpoint["state_dict"].items()] == [
        ("ctx", (4, WIDTH), torch.float32),
        ("token_prefix", (base, 1, WIDTH), torch.float32),
        ("token_suffix", (base, 72, WIDTH), torch.float32),
        ("meta_net.linear1.weight", (4, 64), torch.float32),
        ("meta_net.linear1.bias", (4,), torch.float32),
        ("meta_net.linear2.weight", (64, 4), torch.float32),
        ("meta_net.linear2.bias", (64,), torch.float32),
    ]

    again = main(cocoop_args(pets_root, tmp_path / "test_base", tiny_vit, "DATASET.SUBSAMPLE_CLASSES", "base",
                             flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1")))
    assert f'Loading weights to prompt_learner from "{path}" (epoch = 1)' in capsys.readouterr().out
    assert again.test_results == trained.test_results

    new = main(cocoop_args(pets_root, tmp_path / "test_new", tiny_vit, "DATASET.SUBSAMPLE_CLASSES", "new",
                           flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1")))
    learner = new.model.prompt_learner
    assert learner.token_prefix.shape[0] == 2  # prompts rebuilt for the 2 new classes, not the 3 saved
    for key, value in checkpoint["state_dict"].items():
        if not key.startswith("token_"):
            assert torch.equal(learner.state_dict()[key], value), key
    assert "SUBSAMPLE NEW CLASSES!" in capsys.readouterr().out


@pytest.mark.parametrize("val_result, cuda", [("absent", True), (None, False)])
def test_reference_checkpoint_loads_through_eval_only(pets_root, tiny_vit, tmp_path, capsys, val_result, cuda):
    model_dir = tmp_path / "reference"
    state = cocoop_state(n_ctx=4)
    with torch.no_grad():
        for key in META_NET:
            state[key].normal_()
    path = model_dir / "prompt_learner" / "model.pth.tar-10"
    write_dassl_checkpoint(path, state, epoch=10, val_result=val_result, cuda=cuda)
    trainer = main(cocoop_args(pets_root, tmp_path / "eval", tiny_vit,
                               flags=("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "10")))
    assert f'Loading weights to prompt_learner from "{path}" (epoch = 10)' in capsys.readouterr().out
    loaded = trainer.model.prompt_learner.state_dict()
    for key in ["ctx", *META_NET]:
        assert torch.equal(loaded[key], state[key].float()), key
    assert loaded["token_prefix"].shape == (5, 1, WIDTH)
    assert trainer.test_results is not None


@pytest.fixture(scope="module")
def cocoop_trainer(pets_root, tiny_vit, tmp_path_factory):
    return build(pets_root, tmp_path_factory.mktemp("cocoop"), tiny_vit, "TRAINER.COCOOP.PREC", "fp32",
                 trainer="CoCoOp", config=CONFIG)


@pytest.mark.parametrize("make_state, message", [
    (lambda: cocoop_state(n_ctx=4, vis_dim=512),
     r"meta_net\.linear1\.weight: checkpoint \(32, 512\) vs model \(4, 64\).*another CLIP backbone"),
    (lambda: cocoop_state(n_ctx=16), r"N_CTX differs \(checkpoint 16, config 4\)"),
    (lambda: coop_state(n_ctx=4), r"missing keys \['meta_net\.linear1\.bias'"),
])
def test_mismatched_checkpoint_names_the_differing_value(cocoop_trainer, tmp_path, make_state, message):
    write_dassl_checkpoint(tmp_path / "prompt_learner" / "model.pth.tar-2", make_state(), epoch=2)
    with pytest.raises(CheckpointMismatchError, match=message):
        cocoop_trainer.load_model(str(tmp_path), epoch=2)


# ------------------------------------------------------------------------------------------- the yamls
COCOOP_YAMLS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs/trainers/CoCoOp").glob("*.yaml"))


@pytest.mark.parametrize("name", COCOOP_YAMLS)
def test_every_cocoop_yaml_builds_its_trainer(pets_root, tiny_vit, tmp_path, name):
    assert len(COCOOP_YAMLS) == 4
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU"):  # the yamls' PREC fp16
        trainer = build(pets_root, tmp_path, tiny_vit, trainer="CoCoOp", config=f"trainers/CoCoOp/{name}.yaml")
    learner = trainer.model.prompt_learner
    n_ctx = 4 if "_c4_" in name else 8 if "_c8_" in name else 16
    assert learner.ctx.shape == (n_ctx, WIDTH)
    assert (learner.prompt_prefix == "a photo of a") == name.endswith("ctxv1")
    assert trainer.max_epoch == 10 and trainer.cfg.DATALOADER.TRAIN_X.BATCH_SIZE == 1
    optimised = {id(p) for group in trainer.optim.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in learner.parameters()}
    assert trainer.optim.param_groups[0]["lr"] == pytest.approx(1e-5)
