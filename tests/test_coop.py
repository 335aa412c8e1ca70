"""CoOp: logits against clip's own forward on written-out prompts, checkpoint interchange with the original
CoOp/Dassl in both directions, the mismatch errors, and every CoOp yaml building its trainer."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from conftest import train_args, written_out
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.cli import build_parser, main, setup_cfg
from vlprompt.compat import build_trainer
from vlprompt.prompt_trainer import CheckpointMismatchError
from vlprompt.prompts import tokenize
from vlprompt.tiny_clip import build_tiny_clip

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20"]
CLASSNAMES = ["abyssinian", "american_bulldog", "great pyrenees dog", "x", "newfoundland"]
# Single-BPE-token words: a context made of their embeddings is exactly the written-out prompt.
WORDS = ["a", "photo", "of", "the", "big", "small", "red", "dog", "cat", "picture", "nice", "good"]
WIDTH = 64  # the tiny CLIP's text width (context vector size)
PETS_CLASSES = 5  # classes in the synthetic OxfordPets tree


# ------------------------------------------------------------------------------ files as Dassl writes them
def write_dassl_checkpoint(path: Path, state_dict: dict, epoch: int, *, val_result="absent",
                           cuda: bool = False, legacy: bool = False) -> None:
    """A checkpoint as the original Dassl 0.6.3 ``save_checkpoint`` writes it from a CoOp run: fp16 tensors,
    the SGD state, the warm-up scheduler's state holding its live ``CosineAnnealingLR`` successor (which
    holds the SGD object and the parameters), ``val_result`` only in Dassl >= Aug 2022, CUDA storage tags
    when trained on a GPU, and (``legacy``) torch's pre-1.6 file format."""
    params = [nn.Parameter(v.clone()) for k, v in state_dict.items() if not k.startswith("token_")]
    sgd = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=epoch)
    for param in params:
        param.grad = torch.full_like(param, 0.01)
    sgd.step()  # momentum buffers in the optimiser state, as after training
    successor.step()
    state = {
        "state_dict": OrderedDict(state_dict),
        "epoch": epoch,
        "optimizer": sgd.state_dict(),
        "scheduler": {
            "successor": successor, "warmup_epoch": 1, "cons_lr": 1e-5, "base_lrs": [0.002], "last_epoch": epoch,
            "_step_count": epoch + 1, "_is_initial": False, "_get_lr_called_within_step": False,
            "_last_lr": [successor.get_last_lr()[0]],
        },
    }
    if val_result != "absent":
        state["val_result"] = val_result
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if cuda:
            from unittest import mock

            stack.enter_context(mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"))
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)  # plain pickling, as Dassl does
    if cuda and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really is tagged for a GPU
            torch.load(path, weights_only=False)


def coop_state(n_ctx: int = 4, n_cls: int = 37, csc: bool = False, width: int = WIDTH, seed: int = 0) -> dict:
    """A CoOp prompt_learner state dict as a GPU fp16 run writes it (37 classes: the full OxfordPets)."""
    g = torch.Generator().manual_seed(seed)
    ctx_shape = (n_cls, n_ctx, width) if csc else (n_ctx, width)
    return OrderedDict([
        ("ctx", (torch.randn(ctx_shape, generator=g) * 0.5).half()),
        ("token_prefix", torch.randn(n_cls, 1, width, generator=g).half()),
        ("token_suffix", torch.randn(n_cls, 77 - 1 - n_ctx, width, generator=g).half()),
    ])


def build(pets_root: str, out: Path, tiny_vit: str, *opts: str, trainer: str = "CoOp",
          config: str = "trainers/CoOp/vit_b16.yaml"):
    """A trainer built as train.py builds it (no training)."""
    args = build_parser().parse_args(train_args(pets_root, out, trainer, config, "--no-train",
                                                "MODEL.BACKBONE.NAME", tiny_vit, *FAST, *opts))
    return build_trainer(setup_cfg(args))


# ----------------------------------------------------------------------------------- logits, exactly
@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_logits_equal_clip_forward_on_written_out_prompts(position, csc):
    from vlprompt.trainers.coop import CoOpCLIP

    clip_model = build_tiny_clip("vit", seed=0).float().eval()
    n_ctx = 4
    cfg = CN({"N_CTX": n_ctx, "CTX_INIT": "", "CSC": csc, "CLASS_TOKEN_POSITION": position, "PREC": "fp32"})
    model = CoOpCLIP(CLASSNAMES, clip_model, cfg)
    per_class = [WORDS[i : i + n_ctx] if csc else WORDS[:n_ctx] for i in range(len(CLASSNAMES))]
    ids = tokenize([" ".join(words) for words in per_class])[:, 1 : 1 + n_ctx]
    with torch.no_grad():
        embeddings = clip_model.token_embedding(ids)
        model.prompt_learner.ctx.copy_(embeddings if csc else embeddings[0])
        images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        ours = model(images)
        texts = [written_out(words, name, position) for words, name in zip(per_class, CLASSNAMES)]
        reference, _ = clip_model(images, tokenize(texts))  # CLIP's logits_per_image
    assert ours.shape == (3, len(CLASSNAMES))
    assert (ours - reference).abs().max().item() <= 1e-4
    assert ours.std() > 0.1  # the comparison is not between constants


@pytest.mark.parametrize("n_ctx, max_prompts", [(4, 0), (16, 0), (4, 2)])
def test_shared_prefix_encoding_equals_full_length_with_gradients(n_ctx, max_prompts, monkeypatch):
    """The fast path (truncated, [SOS][ctx] computed once, optionally chunked) against CLIP's computation
    over all 77 positions of every prompt: features and context gradients, and the work really shrinks."""
    from vlprompt.prompts import PromptLearner
    from vlprompt.text_encoder import PromptTextEncoder

    clip_model = build_tiny_clip("vit", seed=0).float().eval().requires_grad_(False)
    torch.manual_seed(0)
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=n_ctx, verbose=False)
    assert learner.shared_prefix_length == 1 + n_ctx
    targets = torch.randn(len(CLASSNAMES), clip_model.text_projection.shape[1])
    mlp_tokens = []
    block = clip_model.transformer.resblocks[0]
    original_mlp = block.mlp.forward
    monkeypatch.setattr(block.mlp, "forward", lambda x: mlp_tokens.append(x.numel() // x.shape[-1]) or original_mlp(x))
    results = []
    for fast in (True, False):
        learner.zero_grad()
        mlp_tokens.clear()
        encoder = PromptTextEncoder(clip_model, truncate=fast, share_prefix=fast, max_prompts=max_prompts if fast else 0)
        features = encoder(learner(), learner.tokenized_prompts, learner.shared_prefix_length)
        (features * targets).sum().backward()
        results.append((features.detach(), learner.ctx.grad.clone(), sum(mlp_tokens)))
    (fast_features, fast_grad, fast_tokens), (full_features, full_grad, full_tokens) = results
    assert (fast_features - full_features).abs().max().item() <= 1e-5
    # The shared context's gradient sums every class's contribution in another order: fp32 rounding of the
    # sum is a few 1e-7 relative (a wrong path differs by far more).
    assert (fast_grad - full_grad).abs().max().item() <= 1e-5 * full_grad.abs().max().item()
    assert fast_grad.abs().sum() > 0
    eot = learner.tokenized_prompts.argmax(-1).tolist()
    step = max_prompts or len(eot)
    # per pass: one prefix, then each class's positions after it up to its own end-of-text token (no padding)
    assert fast_tokens == sum(1 + n_ctx + sum(e - n_ctx for e in part)
                              for part in (eot[i : i + step] for i in range(0, len(eot), step)))
    assert len(set(eot)) > 1  # the class names have different lengths, so padding would have cost tokens
    assert full_tokens == len(CLASSNAMES) * 77


def test_csc_is_ignored_with_ctx_init_as_in_coop(capsys):
    from vlprompt.trainers.coop import CoOpCLIP

    clip_model = build_tiny_clip("vit", seed=0).float().eval()
    cfg = CN({"N_CTX": 16, "CTX_INIT": "a photo of a", "CSC": True, "CLASS_TOKEN_POSITION": "end", "PREC": "fp32"})
    learner = CoOpCLIP(CLASSNAMES, clip_model, cfg).prompt_learner
    assert learner.ctx.shape == (4, WIDTH)  # CoOp's shape, so such checkpoints interchange
    assert "CSC is ignored when CTX_INIT is set" in capsys.readouterr().out


def test_fp16_clip_gives_fp16_prompt_state_like_coop():
    from vlprompt.clip_backbone import import_clip
    from vlprompt.prompts import PromptLearner

    clip_model = build_tiny_clip("vit", seed=0)
    import_clip().model.convert_weights(clip_model)
    state = PromptLearner(CLASSNAMES, clip_model, n_ctx=4, verbose=False).state_dict()
    assert {key: value.dtype for key, value in state.items()} == dict.fromkeys(state, torch.float16)


# ------------------------------------------------------------------------- our files, as CoOp reads them
@pytest.mark.parametrize("csc", [False, True])
def test_saved_checkpoint_has_exactly_the_reference_keys_shapes_and_dtypes(pets_root, tiny_vit, tmp_path, csc):
    main(train_args(pets_root, tmp_path, "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "1",
                    "MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
                    "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", str(csc), "TRAINER.COOP.PREC", "fp32", *FAST))
    path = tmp_path / "prompt_learner" / "model.pth.tar-1"
    # What the original code does: Dassl's load_checkpoint is a plain torch.load (weights_only is the
    # default since torch 2.6, so our file must not need anything more), then CoOp's load_model.
    checkpoint = torch.load(path, map_location="cpu")
    assert {"state_dict", "epoch", "optimizer", "scheduler", "val_result"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["val_result"] is None
    state = checkpoint["state_dict"]
    ctx_shape = (PETS_CLASSES, 4, WIDTH) if csc else (4, WIDTH)
    assert [(k, tuple(v.shape), v.dtype) for k, v in state.items()] == [
        ("ctx", ctx_shape, torch.float32),
        ("token_prefix", (PETS_CLASSES, 1, WIDTH), torch.float32),
        ("token_suffix", (PETS_CLASSES, 77 - 1 - 4, WIDTH), torch.float32),
    ]
    # CoOp's load_model: drop the two buffers, load the rest with strict=False into its prompt learner.
    reference_learner = nn.Module()
    reference_learner.ctx = nn.Parameter(torch.zeros(ctx_shape))
    del state["token_prefix"], state["token_suffix"]
    result = reference_learner.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(reference_learner.ctx, state["ctx"])


# ------------------------------------------------------------------- the original's files, through train.py
@pytest.mark.parametrize("val_result, cuda, legacy", [("absent", True, False), (None, False, False),
                                                     (71.5, True, True)])
def test_reference_checkpoint_loads_through_eval_only(pets_root, tiny_vit, tmp_path, capsys, val_result, cuda,
                                                      legacy):
    model_dir = tmp_path / "reference"
    state = coop_state(n_ctx=4)
    path = model_dir / "prompt_learner" / "model.pth.tar-50"
    write_dassl_checkpoint(path, state, epoch=50, val_result=val_result, cuda=cuda, legacy=legacy)

    trainer = main(train_args(pets_root, tmp_path / "eval", "CoOp", "trainers/CoOp/vit_b16.yaml", "--eval-only",
                              "--model-dir", str(model_dir), "--load-epoch", "50", "MODEL.BACKBONE.NAME", tiny_vit,
                              "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", *FAST))
    printed = capsys.readouterr().out
    assert f'Loading weights to prompt_learner from "{path}" (epoch = 50)' in printed
    learner = trainer.model.prompt_learner
    assert torch.equal(learner.ctx.detach(), state["ctx"].float())
    # the 37-class buffers of the file are ignored: the prompts are those of the 5 current classes
    assert learner.token_prefix.shape == (PETS_CLASSES, 1, WIDTH)

    # The accuracy is that of the file's context: the same as setting that context by hand.
    fresh = build(pets_root, tmp_path / "fresh", tiny_vit, "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32")
    with torch.no_grad():
        fresh.model.prompt_learner.ctx.copy_(state["ctx"].float())
    fresh.test()
    assert fresh.test_results == trainer.test_results


# ---------------------------------------------------------------------------------- the mismatch errors
@pytest.fixture(scope="module")
def generic_trainer(pets_root, tiny_vit, tmp_path_factory):
    return build(pets_root, tmp_path_factory.mktemp("generic"), tiny_vit,
                 "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32")


@pytest.fixture(scope="module")
def csc_trainer(pets_root, tiny_vit, tmp_path_factory):
    return build(pets_root, tmp_path_factory.mktemp("csc"), tiny_vit,
                 "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CSC", "True", "TRAINER.COOP.PREC", "fp32")


def cocoop_state(n_ctx: int = 4, vis_dim: int = WIDTH) -> dict:
    state = coop_state(n_ctx=n_ctx)
    state.update({
        "meta_net.linear1.weight": torch.zeros(vis_dim // 16, vis_dim).half(),
        "meta_net.linear1.bias": torch.zeros(vis_dim // 16).half(),
        "meta_net.linear2.weight": torch.zeros(WIDTH, vis_dim // 16).half(),
        "meta_net.linear2.bias": torch.zeros(WIDTH).half(),
    })
    return state


MISMATCHES = [
    ("generic", lambda: coop_state(n_ctx=16), r"N_CTX differs \(checkpoint 16, config 4\)"),
    ("generic", lambda: coop_state(n_ctx=4, n_cls=5, csc=True), (r"CSC differs \(checkpoint class-specific "
                                                                r"context, config CSC=False\)")),
    ("csc", lambda: coop_state(n_ctx=4), r"CSC differs \(checkpoint shared context, config CSC=True\)"),
    ("generic", lambda: coop_state(n_ctx=4, width=512), r"context width differs \(checkpoint 512, model 64\)"),
    ("csc", lambda: coop_state(n_ctx=4, n_cls=37, csc=True), r"number of classes differs \(checkpoint 37, dataset 5\)"),
    ("csc", lambda: coop_state(n_ctx=8, n_cls=5, csc=True), r"N_CTX differs \(checkpoint 8, config 4\)"),
    ("generic", cocoop_state, r"unexpected keys \['meta_net\.linear1\.bias'"),
]


@pytest.mark.parametrize("which, make_state, message", MISMATCHES)
def test_mismatched_checkpoint_names_the_differing_value(generic_trainer, csc_trainer, tmp_path, which,
                                                         make_state, message):
    trainer = generic_trainer if which == "generic" else csc_trainer
    before = trainer.model.prompt_learner.ctx.detach().clone()
    path = tmp_path / "prompt_learner" / "model.pth.tar-3"
    write_dassl_checkpoint(path, make_state(), epoch=3)
    with pytest.raises(CheckpointMismatchError, match=message) as info:
        trainer.load_model(str(tmp_path), epoch=3)
    assert str(path) in str(info.value)
    assert torch.equal(trainer.model.prompt_learner.ctx.detach(), before)  # nothing half-loaded


def test_missing_checkpoint_names_the_path(generic_trainer, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'Model not found at ".*prompt_learner/model\.pth\.tar-7"'):
        generic_trainer.load_model(str(tmp_path), epoch=7)


# ------------------------------------------------------------------------------------------- the yamls
COOP_YAMLS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs/trainers/CoOp").glob("*.yaml"))


def test_all_sixteen_coop_yamls_are_tested():
    assert len(COOP_YAMLS) == 16


@pytest.mark.parametrize("name", COOP_YAMLS)
def test_every_coop_yaml_builds_its_trainer(pets_root, tiny_vit, tmp_path, name):
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / f"configs/trainers/CoOp/{name}.yaml").read_text())
    with pytest.warns(UserWarning, match="fp16 is not supported on CPU"):  # the default PREC fp16
        trainer = build(pets_root, tmp_path, tiny_vit, config=f"trainers/CoOp/{name}.yaml")
    assert type(trainer).__name__ == "CoOp"
    learner = trainer.model.prompt_learner
    if "ctxv1" in name:
        assert learner.prompt_prefix == "a photo of a" and learner.ctx.shape == (4, WIDTH)
    else:
        assert learner.ctx.shape == (16, WIDTH)
    optim = data.get("OPTIM", {})
    assert trainer.max_epoch == optim.get("MAX_EPOCH", trainer.cfg.OPTIM.MAX_EPOCH)
    assert trainer.cfg.DATALOADER.TRAIN_X.BATCH_SIZE == data["DATALOADER"]["TRAIN_X"]["BATCH_SIZE"]
    # only the context is optimised; the reference schedule starts with the constant warm-up LR
    assert [p for group in trainer.optim.param_groups for p in group["params"]] == [learner.ctx]
    if optim:
        assert type(trainer.optim).__name__ == "SGD"
        assert trainer.optim.param_groups[0]["lr"] == pytest.approx(1e-5)
        assert trainer.optim.defaults["momentum"] == 0.9 and trainer.optim.defaults["weight_decay"] == 5e-4
