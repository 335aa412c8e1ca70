"""TPT: views, selection and loss, the fast path against the straightforward computation, checkpoint kinds,
resume, shards and merge, and train.py end to end (tiny 64-pixel CLIPs, synthetic trees)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, config_file
from PIL import Image

from vlprompt.cli import main
from vlprompt.compat import DATASET_REGISTRY, DatasetBase, Datum
from vlprompt.prompts import PromptLearner
from vlprompt.text_encoder import PromptTextEncoder
from vlprompt.tiny_clip import build_tiny_clip, save_tiny_clip
from vlprompt.trainers.cocoop import CoCoOpContext, ConditionalPromptLearner
from vlprompt.tta import merge as tpt_merge
from vlprompt.tta.objective import marginal_entropy, num_selected, select_confident, view_entropy
from vlprompt.tta.records import SHARD_ENV, PredictionLogError, parse_shard
from vlprompt.tta.sources import (
    CHECKPOINT_KINDS,
    LearnedContext,
    UnknownCheckpointError,
    WordsContext,
    context_from_checkpoint,
    register_checkpoint_kind,
    resolve_checkpoint,
)
from vlprompt.tta.straightforward import StraightforwardTPT
from vlprompt.tta.tuner import PromptTuner, TPTSettings, encode_views, normalize
from vlprompt.tta.views import (
    AUGMIX_OPS,
    ViewMaker,
    ViewParams,
    apply_op_pil,
    apply_op_tensor,
    image_rng,
    pil_to_tensor,
    resolve_aug,
    sample_crop,
)

RES = 64
CLASSNAMES = ["abyssinian", "american_bulldog", "great pyrenees dog", "x", "newfoundland"]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE", f"({RES}, {RES})", "TRAINER.TPT.N_VIEWS", "8",
        "TRAINER.TPT.SELECTION_P", "0.25", "TRAINER.TPT.PRINT_FREQ", "5"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: threads only add synchronisation, which a busy machine makes very slow."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> dict[str, str]:
    """fp16 state-dict files of the tiny ViT and ResNet CLIPs at a 64-pixel input (cheap views)."""
    folder = tmp_path_factory.mktemp("tiny64")
    return {kind: str(save_tiny_clip(folder / f"{kind}.pt", kind, image_resolution=RES)) for kind in ("vit", "rn")}


@pytest.fixture(scope="module")
def vit64():
    return build_tiny_clip("vit", image_resolution=RES).float().eval().requires_grad_(False)


@DATASET_REGISTRY.register(force=True)
class ImageNetToy(DatasetBase):
    """Test-only ImageNet-style set (class folders of images, test split only): auto views are crops."""

    def __init__(self, cfg) -> None:
        folder = os.path.join(cfg.DATASET.ROOT, "imagenet_toy")
        items = [Datum(impath=os.path.join(folder, name, file), label=label, classname=name)
                 for label, name in enumerate(sorted(os.listdir(folder)))
                 for file in sorted(os.listdir(os.path.join(folder, name)))]
        super().__init__(train_x=[], val=[], test=items)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> str:
    """4 classes x 3 images in ``imagenet_toy/<class>/`` (the ImageFolder layout of ImageNet's shifts)."""
    from vlprompt.synthetic_data import class_image

    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["goldfish", "great_white_shark", "tench", "hammerhead"]):
        folder = root / "imagenet_toy" / name
        folder.mkdir(parents=True)
        for k in range(3):
            class_image(label, 4, 80, rng).save(folder / f"{k}.jpg", quality=90)
    return str(root)


@pytest.fixture(scope="module")
def both_root(pets_root, toy_root, tmp_path_factory) -> str:
    """One data root holding the ImageNet-style toy set and OxfordPets (links to the two trees)."""
    root = tmp_path_factory.mktemp("both")
    for name, source in (("oxford_pets", pets_root), ("imagenet_toy", toy_root)):
        os.symlink(Path(source) / name, root / name)
    return str(root)


def tpt_args(root, out, backbone, *extra, dataset="oxford_pets", seed="1", flags=()):
    args = ["--root", root, "--trainer", "TPT", "--config-file", config_file("trainers/TPT/vit_b16.yaml"),
            "--output-dir", str(out), "--seed", seed, *flags]
    if dataset:
        args += ["--dataset-config-file", config_file(f"datasets/{dataset}.yaml")]
    return args + ["MODEL.BACKBONE.NAME", backbone, *FAST, *extra]


def log_rows(out, name="OxfordPets", shard=""):
    path = Path(out) / "tpt_predictions" / f"{name}{shard}.jsonl"
    lines = path.read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def result_text(printed: str) -> str:
    """From Dassl's result block to the reference's line (the part a merge must reproduce)."""
    start = printed.rindex("=> result")
    return printed[start : printed.index("\n", printed.index("=> Acc. on testset", start))]


def assert_same_context(ours: torch.Tensor, reference: torch.Tensor, lr: float = 5e-3) -> None:
    """Equal up to float rounding. AdamW divides each gradient entry by its own magnitude, so an entry whose
    gradient is ~0 (near AdamW's eps) turns rounding noise into a visible but tiny difference: rare, and far
    below one step (lr)."""
    diff = (ours - reference).abs()
    assert diff.max() < 0.02 * lr
    assert (diff > 1e-6).float().mean() < 0.01


def random_views(n_images=3, n_views=8, seed=0):
    return torch.randn(n_images, n_views, 3, RES, RES, generator=torch.Generator().manual_seed(seed))


def fast_path(clip, source, views, settings, share_first_step=True):
    learner = source.learner(CLASSNAMES, clip)
    tuner = PromptTuner(learner, PromptTextEncoder(clip), clip.logit_scale.exp(), settings,
                        share_first_step=share_first_step)
    features = encode_views(clip.visual, views)
    return tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=source.shared)


def straightforward(clip, source, views, settings):
    learner = source.learner(CLASSNAMES, clip)
    conditional = None if source.shared else source.initial_context
    tpt = StraightforwardTPT(clip, learner, settings, initial_context=conditional)
    return [tpt(image) for image in views]


def cocoop_source(clip, seed=0):
    torch.manual_seed(seed)
    learner = ConditionalPromptLearner(CLASSNAMES, clip, n_ctx=4, ctx_init="")
    with torch.no_grad():
        for p in learner.meta_net.parameters():
            p.normal_(0, 0.5)
    return CoCoOpContext(dict(learner.state_dict()), "memory")


# ------------------------------------------------------------------------------- selection and loss
def test_selection_keeps_the_lowest_entropy_views():
    assert num_selected(64, 0.1) == 6 and num_selected(8, 0.1) == 1
    logits = torch.zeros(2, 10, 5)  # uniform: maximal entropy
    sharpness = {2: 9.0, 7: 5.0, 4: 3.0}  # views made confident, in decreasing confidence
    for view, scale in sharpness.items():
        logits[0, view, view % 5] = scale
    logits[1, 9, 0] = 1.0
    assert select_confident(logits, 0.3)[0].tolist() == [2, 7, 4]
    assert select_confident(logits, 0.1)[1].tolist() == [9]
    entropy = view_entropy(logits)
    assert entropy[0, 2] < entropy[0, 7] < entropy[0, 4] < entropy[0, 0] == pytest.approx(np.log(5))


def test_loss_is_the_entropy_of_the_averaged_prediction():
    logits = torch.randn(3, 6, 7, generator=torch.Generator().manual_seed(0)) * 4
    mean = logits.softmax(-1).mean(-2)
    direct = -(mean * mean.log()).sum(-1)
    assert torch.allclose(marginal_entropy(logits), direct, atol=1e-5)
    assert torch.isfinite(marginal_entropy(torch.tensor([[1e4, -1e4, 0.0]]))).all()  # no 0 * log 0 NaN


def test_tuned_loss_equals_a_direct_computation_at_the_initial_prompt(vit64):
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=1)
    views = random_views(2)
    source = WordsContext("a photo of a")
    result = fast_path(vit64, source, views, settings)
    learner = source.learner(CLASSNAMES, vit64)
    with torch.no_grad():
        text = vit64.encode_text(learner.tokenized_prompts)  # written-out "a photo of a <class>."
        image = vit64.encode_image(views.flatten(0, 1)).view(2, 8, -1)
        logits = vit64.logit_scale.exp() * normalize(image) @ normalize(text).t()
    for b in range(2):
        probs = logits[b].softmax(-1)
        entropy = -(probs * probs.log()).sum(-1)
        kept = entropy.argsort()[:2]
        assert sorted(kept.tolist()) == sorted(result.selected[b].tolist())
        mean = probs[kept].mean(0)
        assert result.loss[b].item() == pytest.approx(-(mean * mean.log()).sum().item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------- views
def test_original_and_crop_views_match_torchvision_exactly():
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF

    from vlprompt.synthetic_data import class_image

    img = class_image(2, 5, 90, np.random.default_rng(0)).resize((97, 80))
    maker = ViewMaker(RES, 6, augmix=False, mean=CLIP_MEAN, std=CLIP_STD)
    reference = T.Compose([T.Resize(RES, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(RES), T.ToTensor(),
                           T.Normalize(CLIP_MEAN, CLIP_STD)])
    views = maker.views(img, image_rng(3, 7))
    assert views.shape == (6, 3, RES, RES) and torch.equal(views[0], reference(img))
    expected = []
    for p in maker.sample(image_rng(3, 7), *img.size):
        crop = TF.resized_crop(img, p.top, p.left, p.height, p.width, [RES, RES], T.InterpolationMode.BILINEAR)
        crop = TF.hflip(crop) if p.flip else crop
        expected.append(TF.normalize(TF.to_tensor(crop), CLIP_MEAN, CLIP_STD))
    assert torch.equal(views[1:], torch.stack(expected))
    assert torch.equal(maker.views(img, image_rng(3, 7)), views)  # (seed, image index) fixes the views
    assert not torch.equal(maker.views(img, image_rng(3, 8))[1:], views[1:])


def test_crop_boxes_and_augmix_strengths_are_the_references():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = sample_crop(rng, 120, 90)
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 120
        assert 0.08 * 0.99 <= h * w / (120 * 90) <= 1.0 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    assert sample_crop(rng, 1000, 10) == (0, 493, 10, 13)  # no box fits: centre crop of the widest ratio
    values = {name: [sampler(rng, 1.0, 224) for _ in range(400)] for name, sampler in AUGMIX_OPS}
    assert set(values["posterize"]) == {4.0} and set(values["rotate"]) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert min(values["solarize"]) >= 231 and max(values["solarize"]) <= 254
    assert max(abs(v) for v in values["shear_x"]) <= 0.03 and max(abs(v) for v in values["translate_y"]) <= 7
    views = ViewMaker(RES, 200, augmix=True, mean=CLIP_MEAN, std=CLIP_STD).sample(rng, 80, 80)
    depths = [len(chain) for view in views for chain in view.chains]
    assert {len(view.chains) for view in views} == {3} and set(depths) == {1, 2, 3}
    assert all(abs(sum(view.chain_weights) - 1) < 1e-5 and 0 <= view.mix <= 1 for view in views)


def test_augmix_blends_chains_with_the_plain_crop():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 70, 3), dtype=np.uint8))
    maker = ViewMaker(RES, 2, augmix=True, mean=CLIP_MEAN, std=CLIP_STD)
    plain = ViewParams(3, 4, 50, 60, flip=True)
    identity = [[(2, 8.0)]] * 3  # posterize to 8 bits changes nothing: the blend must give the crop back
    mixed = ViewParams(3, 4, 50, 60, flip=True, chains=identity, chain_weights=(0.2, 0.3, 0.5), mix=0.3)
    assert torch.allclose(maker.render_pil(img, [mixed]), maker.render_pil(img, [plain]), atol=1e-5)
    solar = ViewParams(3, 4, 50, 60, flip=False, chains=[[(4, 0.0)]] * 3, chain_weights=(0.2, 0.3, 0.5), mix=0.25)
    crop = maker.render_pil(img, [ViewParams(3, 4, 50, 60, flip=False)])[0]
    inverted = maker.preprocess(255 - pil_to_tensor(img.crop((4, 3, 64, 53)).resize((RES, RES), Image.BILINEAR)))
    assert torch.allclose(maker.render_pil(img, [solar])[0], 0.25 * crop + 0.75 * inverted, atol=1e-5)


def test_device_views_are_the_same_operations_as_pil():
    from vlprompt.synthetic_data import class_image

    img = class_image(1, 5, 100, np.random.default_rng(2)).resize((RES, RES), Image.BICUBIC)
    rng = np.random.default_rng(0)
    batch = pil_to_tensor(img)[None].repeat(4, 1, 1, 1)
    for name, sampler in AUGMIX_OPS:
        values = [sampler(rng, 1.0, RES) for _ in range(4)]
        pil = torch.stack([pil_to_tensor(apply_op_pil(img, name, v)) for v in values])
        diff = (apply_op_tensor(batch, name, values).int() - pil.int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.05, name  # PIL's definitions, up to rounding
    big = class_image(3, 5, 150, np.random.default_rng(3)).resize((131, 117))
    maker = ViewMaker(RES, 24, augmix=True, mean=CLIP_MEAN, std=CLIP_STD)
    params = maker.sample(image_rng(0, 1), *big.size)
    on_device = maker.render_device(pil_to_tensor(big), params)
    with_pil = maker.render_pil(big, params)
    # Same crops, flips and operations; only resampling differs (statistically equivalent, not identical).
    assert on_device.shape == with_pil.shape == (23, 3, RES, RES)
    assert (on_device - with_pil).abs().mean() < 0.02 and not torch.equal(on_device, with_pil)


def test_aug_auto_is_crop_for_imagenet_sets_and_augmix_otherwise():
    assert [resolve_aug("auto", n) for n in ("ImageNet", "ImageNetA", "A", "ImageNetToy")] == ["crop"] * 4
    assert resolve_aug("auto", "OxfordPets") == "augmix" and resolve_aug("crop", "OxfordPets") == "crop"
    with pytest.raises(ValueError, match="TRAINER.TPT.AUG"):
        resolve_aug("mixup", "OxfordPets")


# ---------------------------------------------------------------------------- exactness of the fast path
@pytest.mark.parametrize("kind, steps", [("vit", 1), ("vit", 2), ("rn", 1)])
def test_cached_feature_tpt_equals_the_straightforward_computation(kind, steps):
    clip_model = build_tiny_clip(kind, image_resolution=RES).float().eval().requires_grad_(False)
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=steps)
    views = random_views(3)
    source = WordsContext("a photo of a")
    fast = fast_path(clip_model, source, views, settings)
    slow = straightforward(clip_model, source, views, settings)
    init = source.learner(CLASSNAMES, clip_model).ctx.detach()
    for b, (logits, ctx) in enumerate(slow):
        assert fast.logits[b].argmax() == logits.argmax()
        assert torch.allclose(fast.logits[b], logits, atol=1e-4)
        assert_same_context(fast.ctx[b], ctx)
        assert (ctx - init).abs().max() > 0.9 * settings.lr * steps  # the prompt did move


def test_learned_class_specific_context_of_any_length_equals_straightforward(vit64):
    ctx = torch.randn(len(CLASSNAMES), 16, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    source = LearnedContext(ctx, "memory", class_token_position="middle")
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=2)
    views = random_views(2)
    fast = fast_path(vit64, source, views, settings)
    for b, (logits, tuned) in enumerate(straightforward(vit64, source, views, settings)):
        assert fast.logits[b].argmax() == logits.argmax()
        assert_same_context(fast.ctx[b], tuned)
    with pytest.raises(ValueError, match="class-specific context for 5 classes"):
        source.learner(CLASSNAMES[:3], vit64)


def test_cocoop_context_is_tuned_per_image_and_equals_straightforward(vit64):
    source = cocoop_source(vit64)
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=2)
    views = random_views(3)
    fast = fast_path(vit64, source, views, settings)
    learner = source.learner(CLASSNAMES, vit64)
    features = encode_views(vit64.visual, views)
    init = source.initial_context(learner, features[:, 0])
    assert not torch.allclose(init[0], init[1])  # a different starting context for every image
    for b, (logits, ctx) in enumerate(straightforward(vit64, source, views, settings)):
        assert fast.logits[b].argmax() == logits.argmax()
        assert torch.allclose(fast.logits[b], logits, atol=1e-4)
        assert_same_context(fast.ctx[b], ctx)


@pytest.mark.parametrize("kind", ["words", "cocoop"])
def test_tuning_several_images_at_once_equals_one_at_a_time(vit64, kind):
    source = WordsContext("a photo of a") if kind == "words" else cocoop_source(vit64)
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=2)
    views = random_views(4, seed=1)
    together = fast_path(vit64, source, views, settings)
    for b in range(4):
        alone = fast_path(vit64, source, views[b : b + 1], settings)
        assert torch.equal(alone.selected[0], together.selected[b])
        assert torch.allclose(alone.logits[0], together.logits[b], atol=1e-5)
        assert_same_context(alone.ctx[0], together.ctx[b])


def test_shared_first_forward_equals_a_forward_per_image(vit64):
    """Words/CoOp: one text forward for all images at the first step, a backward per image; the same result."""
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=2)
    views = random_views(3, seed=2)
    source = WordsContext("a photo of a")
    shared = fast_path(vit64, source, views, settings)
    separate = fast_path(vit64, source, views, settings, share_first_step=False)
    assert torch.equal(shared.selected, separate.selected)
    assert torch.allclose(shared.loss, separate.loss, atol=1e-6) and torch.allclose(shared.logits, separate.logits, atol=1e-5)
    assert_same_context(shared.ctx, separate.ctx)


def test_prompt_is_reset_for_every_image(vit64):
    """Two identical images give identical predictions whatever came before them."""
    source = WordsContext("a photo of a")
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=2)
    a, b = random_views(2, seed=5)
    learner = source.learner(CLASSNAMES, vit64)
    tuner = PromptTuner(learner, PromptTextEncoder(vit64), vit64.logit_scale.exp(), settings)

    def tune(views):
        features = encode_views(vit64.visual, views[None])
        return tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=True)

    first, _, again = tune(a), tune(b), tune(a)
    assert torch.equal(first.logits, again.logits) and torch.equal(first.ctx, again.ctx)
    reference = StraightforwardTPT(vit64, source.learner(CLASSNAMES, vit64), settings)
    a_first = reference(a)
    reference(b)
    a_again = reference(a)
    assert torch.equal(a_first[0], a_again[0]) and torch.equal(a_first[1], a_again[1])


# ------------------------------------------------------------------------------------ checkpoint kinds
def reference_format_checkpoint(path, state: dict) -> None:
    """A file as the original Dassl/CoOp writes it: plain pickling with a live scheduler object inside."""
    weights = torch.nn.Linear(2, 2)
    sgd = torch.optim.SGD(weights.parameters(), lr=0.002, momentum=0.9)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=50)
    torch.save({"state_dict": OrderedDict(state), "epoch": 50, "optimizer": sgd.state_dict(),
                "scheduler": {"successor": successor, "last_epoch": 50, "base_lrs": [0.002]},
                "val_result": None}, path)


def test_checkpoint_kinds_are_recognised_from_their_keys(vit64, tmp_path):
    coop = PromptLearner(CLASSNAMES, vit64, n_ctx=16, verbose=False)
    reference_format_checkpoint(tmp_path / "coop.pth.tar", coop.state_dict())
    source = context_from_checkpoint(str(tmp_path / "coop.pth.tar"))
    assert source.kind == "coop" and torch.equal(source.ctx, coop.ctx.detach())
    assert torch.equal(source.learner(["a", "b"], vit64).ctx, coop.ctx.detach())  # any class set, no reload

    cocoop = ConditionalPromptLearner(CLASSNAMES, vit64, n_ctx=4, ctx_init="a photo of a")
    state = {f"module.{k}": v for k, v in cocoop.state_dict().items()}  # DataParallel names are fine too
    reference_format_checkpoint(tmp_path / "cocoop.pth.tar", state)
    source = context_from_checkpoint(str(tmp_path / "cocoop.pth.tar"))
    assert source.kind == "cocoop" and not source.shared
    learner = source.learner(["a", "b", "c"], vit64)
    feature = torch.randn(2, 64)
    assert torch.allclose(source.initial_context(learner, feature), cocoop.conditional_context(normalize(feature)))


def test_unknown_checkpoint_kind_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pth.tar-5"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 8), "weight": torch.zeros(3)}, "epoch": 5}, path)
    with pytest.raises(UnknownCheckpointError) as info:
        context_from_checkpoint(str(path))
    message = str(info.value)
    assert str(path) in message and "['ctx', 'weight']" in message and "coop (ctx only)" in message
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(UnknownCheckpointError, match="no state dict"):
        context_from_checkpoint(str(tmp_path / "empty.pth"))


def test_new_checkpoint_kinds_plug_in(vit64, tmp_path):
    """The hook another method (GenPT) uses: a key signature and a builder."""
    path = tmp_path / "genpt.pth"
    torch.save({"state_dict": {"prompt": torch.ones(4, 64)}}, path)
    register_checkpoint_kind("test-kind", "prompt", lambda keys: keys == {"prompt"},
                             lambda state, source, cfg: LearnedContext(state["prompt"], source))
    try:
        assert torch.equal(context_from_checkpoint(str(path)).learner(CLASSNAMES, vit64).ctx, torch.ones(4, 64))
    finally:
        del CHECKPOINT_KINDS["test-kind"]


def test_model_directory_resolution(tmp_path):
    folder = tmp_path / "run" / "prompt_learner"
    folder.mkdir(parents=True)
    for epoch in (2, 10):
        torch.save({"state_dict": {"ctx": torch.zeros(4, 8)}}, folder / f"model.pth.tar-{epoch}")
    assert resolve_checkpoint(str(tmp_path / "run")) == str(folder / "model.pth.tar-10")  # highest epoch
    assert resolve_checkpoint(str(folder), epoch=2) == str(folder / "model.pth.tar-2")
    (folder / "checkpoint").write_text("model.pth.tar-2\n")
    assert resolve_checkpoint(str(tmp_path / "run")) == str(folder / "model.pth.tar-2")  # the pointer
    with pytest.raises(FileNotFoundError, match="model.pth.tar-7"):
        resolve_checkpoint(str(tmp_path / "run"), epoch=7)


# ----------------------------------------------------------------------------------- train.py end to end
def test_tpt_from_words_on_pets_writes_results_log_and_record(pets_root, tiny64, tmp_path, capsys):
    out = tmp_path / "words"
    trainer = main(tpt_args(pets_root, out, tiny64["vit"], "TRAINER.TPT.BATCH_IMAGES", "3"))
    printed = capsys.readouterr().out
    assert 'starts from words "a photo of a"' in printed and "crop + flip + AugMix" in printed
    assert re.search(r"Test: \[ 4/20\]\tTime +[\d.]+ \( *[\d.]+\)\tAcc@1 +[\d.]+ \( *[\d.]+\)\tAcc@5", printed)
    assert re.search(r"\* total: 20\n\* correct: \d+\n\* accuracy: [\d.]+%", printed)
    top1, top5 = trainer.test_results["accuracy"], trainer.test_results["top5_accuracy"]
    assert f"=> Acc. on testset [OxfordPets]: @1 {top1:.2f}/ @5 {top5:.2f}" in printed
    header, rows = log_rows(out)
    assert len(rows) == 20 and header["seed"] == 1 and header["settings_detail"]["aug"] == "augmix"
    assert 100 * sum(r["top5"][0] == r["y"] for r in rows) / 20 == pytest.approx(top1)
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "tpt" and record["tpt"]["init"] == "words"
    assert record["metrics"]["top5_accuracy"] == pytest.approx(top5)


def test_several_datasets_one_clip_load_summary_and_crop_views(both_root, tiny64, tmp_path, capsys, monkeypatch):
    import vlprompt.modeling.factory as backbone  # the model cache lives there

    backbone.clear_clip_cache()
    loads = []
    real_load = backbone.load_clip
    monkeypatch.setattr(backbone, "load_clip", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    trainer = main(tpt_args(both_root, tmp_path / "multi", tiny64["rn"], "TRAINER.TPT.TEST_SETS", "ImageNetToy/Pets",
                            "TRAINER.TPT.GPU_VIEWS", "True", dataset=""))
    printed = capsys.readouterr().out
    assert len(loads) == 1  # CLIP loaded once; the second class set only re-tokenises
    assert "evaluating: ImageNetToy (12 test images, 4 classes, views: crop + flip)" in printed
    assert "evaluating: Pets (20 test images, 5 classes, views: crop + flip + AugMix)" in printed
    summary = printed[printed.index("======== Result Summary ========"):]
    assert "ImageNetToy\tPets\t" in summary and re.search(r"average +\d+", summary)
    results = trainer.set_results
    assert list(results) == ["ImageNetToy", "Pets"] and results["ImageNetToy"]["images"] == 12
    assert trainer.test_results["accuracy"] == pytest.approx(
        (results["ImageNetToy"]["accuracy"] + results["Pets"]["accuracy"]) / 2)
    record = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert set(record["metrics_per_dataset"]) == {"ImageNetToy", "Pets"} and record["tpt"]["gpu_views"] is True
    assert record["dataset"] == "ImageNetToy" and record["protocol"] == "tpt"
    from vlprompt.results import collect_runs

    runs = collect_runs(str(tmp_path / "multi")).runs
    assert sorted(run.dataset for run in runs) == ["ImageNetToy", "OxfordPets"]


@pytest.fixture(scope="module")
def trained(pets_root, tiny64, tmp_path_factory):
    """A CoOp and a CoCoOp run (1 epoch, tiny ViT at 64 px) and their own eval-only accuracies."""
    runs = {}
    base = tmp_path_factory.mktemp("trained")
    common = ["DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE", f"({RES}, {RES})", "MODEL.BACKBONE.NAME", tiny64["vit"],
              "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2", "OPTIM.LR", "0.05", "DATALOADER.TEST.BATCH_SIZE", "20"]
    for method, cfg, keys in (
        ("CoOp", "trainers/CoOp/vit_b16.yaml",
         ["TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32", "DATALOADER.TRAIN_X.BATCH_SIZE", "4"]),
        ("CoCoOp", "trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", ["TRAINER.COCOOP.PREC", "fp32"]),
    ):
        out = base / method
        args = ["--root", pets_root, "--trainer", method, "--dataset-config-file",
                config_file("datasets/oxford_pets.yaml"), "--config-file", config_file(cfg), "--seed", "1"]
        main([*args, "--output-dir", str(out), *common, *keys])
        evaluated = main([*args, "--output-dir", str(base / f"{method}_eval"), "--eval-only", "--model-dir", str(out),
                          "--load-epoch", "1", *common, *keys])
        runs[method] = (out, evaluated.test_results["accuracy"])
    return runs


@pytest.mark.parametrize("method", ["CoOp", "CoCoOp"])
def test_tpt_from_our_coop_and_cocoop_checkpoints(pets_root, both_root, tiny64, trained, tmp_path, capsys, method):
    model_dir, own_accuracy = trained[method]
    flags = ("--eval-only", "--model-dir", str(model_dir), "--load-epoch", "1")
    # No tuning and only the original view: exactly the trained model's own evaluation.
    untuned = main(tpt_args(pets_root, tmp_path / "steps0", tiny64["vit"], "TRAINER.TPT.STEPS", "0",
                            "TRAINER.TPT.N_VIEWS", "1", flags=flags))
    assert f"starts from {method} context" in capsys.readouterr().out
    assert untuned.test_results["accuracy"] == pytest.approx(own_accuracy)
    # Tuned, on an ImageNet-style set (crops) and a fine-grained one (AugMix) in one call.
    tuned = main(tpt_args(both_root, tmp_path / "tpt", tiny64["vit"], "TRAINER.TPT.TEST_SETS", "ImageNetToy/Pets",
                          "TRAINER.TPT.LOAD", str(model_dir / "prompt_learner" / "model.pth.tar-1"), dataset=""))
    record = json.loads((tmp_path / "tpt" / "run.json").read_text())
    assert record["tpt"]["init"] == method.lower() and tuned.test_results["images"] == 12 + 20


def test_reference_format_checkpoint_through_train_py(pets_root, tiny64, tmp_path):
    clip = build_tiny_clip("vit", image_resolution=RES)  # same weights as the tiny64 file
    coop = PromptLearner(CLASSNAMES, clip, n_ctx=4, verbose=False)
    reference_format_checkpoint(tmp_path / "coop_ref.pth", coop.state_dict())
    trainer = main(tpt_args(pets_root, tmp_path / "ref", tiny64["vit"], "TRAINER.TPT.LOAD",
                            str(tmp_path / "coop_ref.pth")))
    assert trainer.context.kind == "coop" and torch.equal(trainer.context.ctx, coop.ctx.detach())
    with pytest.raises(ValueError, match="give one"):
        main(tpt_args(pets_root, tmp_path / "both", tiny64["vit"], "TRAINER.TPT.LOAD", str(tmp_path / "coop_ref.pth"),
                      flags=("--eval-only", "--model-dir", str(tmp_path))))
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "linear.pth")
    with pytest.raises(UnknownCheckpointError, match="linear.pth"):
        main(tpt_args(pets_root, tmp_path / "bad", tiny64["vit"], "TRAINER.TPT.LOAD", str(tmp_path / "linear.pth")))


# ------------------------------------------------------------------------------ resume, shards, merge
def test_killed_run_resumes_where_it_stopped(pets_root, tiny64, tmp_path, monkeypatch, capsys):
    straight = main(tpt_args(pets_root, tmp_path / "straight", tiny64["vit"], "TRAINER.TPT.BATCH_IMAGES", "3"))
    _, expected = log_rows(tmp_path / "straight")
    # Images tuned 3 at once predict as one at a time; their confidences agree to float rounding (the packed
    # text tower multiplies matrices of other shapes).
    main(tpt_args(pets_root, tmp_path / "one_at_a_time", tiny64["vit"]))
    _, single = log_rows(tmp_path / "one_at_a_time")
    assert [(r["i"], r["top5"]) for r in single] == [(r["i"], r["top5"]) for r in expected]
    assert [r["p"] for r in single] == pytest.approx([r["p"] for r in expected], rel=1e-5)

    calls = []
    original = PromptTuner.tune

    kill_at = [3]

    def dies_on_third_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at[0]:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PromptTuner, "tune", dies_on_third_batch)
    args = tpt_args(pets_root, tmp_path / "killed", tiny64["vit"], "TRAINER.TPT.BATCH_IMAGES", "3")
    with pytest.raises(KeyboardInterrupt):
        main(args)
    log = tmp_path / "killed" / "tpt_predictions" / "OxfordPets.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 6
    with open(log, "a") as handle:
        handle.write('{"i": 17, "y": 3, "to')  # a line torn by the kill
    calls.clear()
    kill_at[0] = None
    capsys.readouterr()
    resumed = main(args)
    assert "Resuming: 6 of 20 images already done" in capsys.readouterr().out
    assert len(calls) == 5  # the 14 remaining images in batches of 3
    _, rows = log_rows(tmp_path / "killed")
    assert rows == expected and resumed.test_results == straight.test_results


def test_shards_merge_into_the_unsharded_result(pets_root, tiny64, tmp_path, monkeypatch, capsys):
    main(tpt_args(pets_root, tmp_path / "all", tiny64["vit"]))
    unsharded = result_text(capsys.readouterr().out)
    main(tpt_args(pets_root, tmp_path / "parts" / "a", tiny64["vit"], "TRAINER.TPT.SHARD", "0/2"))
    monkeypatch.setenv(SHARD_ENV, "1/2")
    main(tpt_args(pets_root, tmp_path / "parts" / "b", tiny64["vit"]))
    monkeypatch.delenv(SHARD_ENV)
    _, part = log_rows(tmp_path / "parts" / "b", shard=".shard1of2")
    assert [r["i"] for r in part] == list(range(1, 20, 2))
    capsys.readouterr()
    merged = tpt_merge.main([str(tmp_path / "parts"), "--output-dir", str(tmp_path / "merged")])
    assert result_text(capsys.readouterr().out) == unsharded
    assert log_rows(tmp_path / "merged")[1] == log_rows(tmp_path / "all")[1]
    assert json.loads((tmp_path / "merged" / "tpt_results.json").read_text())["OxfordPets"] == dict(merged["OxfordPets"])

    script = subprocess.run(["bash", str(REPO_ROOT / "scripts/tpt/merge.sh"), "parts"], cwd=tmp_path, check=True,
                            capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert result_text(script.stdout) == unsharded and (tmp_path / "parts" / "merged" / "tpt_results.json").is_file()

    with pytest.raises(PredictionLogError, match="shard.s. 1/2 missing"):
        tpt_merge.main([str(tmp_path / "parts" / "a")])


def test_a_log_of_other_settings_is_not_continued(pets_root, tiny64, tmp_path):
    main(tpt_args(pets_root, tmp_path, tiny64["vit"], "TRAINER.TPT.STEPS", "0"))
    with pytest.raises(PredictionLogError, match="steps|settings"):
        main(tpt_args(pets_root, tmp_path, tiny64["vit"], "TRAINER.TPT.STEPS", "1"))
    assert parse_shard("3/4") == (3, 4)
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("4/4")


def test_scripts_pass_the_reference_modes_to_train_py(tmp_path):
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    stub.chmod(0o755)
    env = {**os.environ, "DATA": str(tmp_path), "PYTHON": str(stub), "ARGS_FILE": str(tmp_path / "args"),
           "OUTPUT_ROOT": str(tmp_path / "out"), "SHARD": "1/4", "LOADEP": "50"}
    subprocess.run(["bash", str(REPO_ROOT / "scripts/tpt/cocoop.sh"), "rn50", "shifts", "/models/cocoop"], env=env,
                   check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[args.index("--trainer") + 1] == "TPT" and args[args.index("--load-epoch") + 1] == "50"
    assert args[args.index("--model-dir") + 1] == "/models/cocoop" and "--eval-only" in args
    assert args[args.index("TRAINER.TPT.TEST_SETS") + 1] == "I/A/V/R/K"
    assert args[args.index("TRAINER.TPT.SHARD") + 1] == "1/4"
    assert args[args.index("--output-dir") + 1].endswith("tpt/rn50/cocoop/I_A_V_R_K/seed0/shard_1_of_4")
    env.pop("SHARD")
    env.pop("LOADEP")
    subprocess.run(["bash", str(REPO_ROOT / "scripts/tpt/coop.sh"), "rn50", "A", "/models/coop.pth"], env=env, check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[args.index("TRAINER.TPT.LOAD") + 1] == "/models/coop.pth" and "--eval-only" not in args
    assert args[args.index("--output-dir") + 1].endswith("tpt/rn50/coop/A/seed0")
    subprocess.run(["bash", str(REPO_ROOT / "scripts/tpt/words.sh"), "vit_b16", "finegrained"], env=env, check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[args.index("TRAINER.TPT.TEST_SETS") + 1].startswith("Flower102/DTD/Pets")
    assert "TRAINER.TPT.SHARD" not in args and args[args.index("--config-file") + 1].endswith("TPT/vit_b16.yaml")
