"""Speed work that must not change results: the packed text encoder (each class to its own end-of-text, the
shared prefix attended without copies), BatchNorm folding and channels-last in the frozen image tower,
memory reuse across images, and the FLOP floor the benchmarks divide by (tiny CLIPs, seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vlprompt.modeling import PromptTextEncoder
from vlprompt.modeling.backbones.speed import (
    ChannelsLast,
    OneDnnConv2d,
    fold_batchnorm,
    inference_image_encoder,
)
from vlprompt.modeling.text_encoder import packed_plan, prompt_floor_flops
from vlprompt.prompts import PromptLearner
from vlprompt.tiny_clip import build_tiny_clip
from vlprompt.tta.sources import WordsContext
from vlprompt.tta.straightforward import StraightforwardTPT
from vlprompt.tta.tuner import (
    HEAP_BLOCK_LIMIT,
    PromptTuner,
    TPTSettings,
    ViewEncoder,
    largest_activation,
    normalize,
)

RES = 64
# Names of 1 to 3 BPE tokens, so the prompts end at three different positions.
CLASSNAMES = ["x", "great pyrenees dog", "abyssinian", "american_bulldog", "newfoundland", "cat", "sea lion"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vit():
    return build_tiny_clip("vit", seed=0).float().eval().requires_grad_(False)


def resnet_with_real_statistics(seed: int = 0) -> nn.Module:
    """The tiny ResNet CLIP with BatchNorm statistics far from the identity (fresh ones are mean 0, var 1)."""
    model = build_tiny_clip("rn", seed=seed, image_resolution=RES).float().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for bn in (m for m in model.visual.modules() if isinstance(m, nn.BatchNorm2d)):
        channels = bn.num_features
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
        bn.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
        bn.bias.data.copy_(torch.randn(channels, generator=generator) * 0.2)
    return model


# ----------------------------------------------------------------------------------------- text tower
def encode(encoder: PromptTextEncoder, learner: PromptLearner, ctx: torch.Tensor, tokenized=None, shared=True):
    tokens = learner.tokenized_prompts if tokenized is None else tokenized
    return encoder(learner.assemble(ctx), tokens, learner.shared_prefix_length if shared else 0)


@pytest.mark.parametrize("truncate", [True, False])
def test_packed_encoding_equals_clips_full_computation_with_gradients(vit, truncate):
    """Several groups (one context per image, as CoCoOp/batched TPT), classes of four lengths: features and
    context gradients equal CLIP's computation over all 77 positions of every prompt."""
    learner = PromptLearner(CLASSNAMES, vit, n_ctx=4, verbose=False)
    assert len(set(learner.tokenized_prompts.argmax(-1).tolist())) >= 3
    ctx = (learner.ctx.detach()[None] + 0.05 * torch.randn(3, *learner.ctx.shape,
                                                           generator=torch.Generator().manual_seed(0)))
    targets = torch.randn(3, len(CLASSNAMES), vit.text_projection.shape[1], generator=torch.Generator().manual_seed(1))
    results = []
    for encoder in (PromptTextEncoder(vit, truncate=truncate), PromptTextEncoder(vit, truncate=False, share_prefix=False)):
        leaf = ctx.clone().requires_grad_(True)
        features = encode(encoder, learner, leaf)
        (features * targets).sum().backward()
        results.append((features.detach(), leaf.grad))
    (fast, fast_grad), (full, full_grad) = results
    assert fast.shape == (3, len(CLASSNAMES), vit.text_projection.shape[1])
    assert (fast - full).abs().max().item() <= 1e-5
    assert (fast_grad - full_grad).abs().max().item() <= 1e-5 * full_grad.abs().max().item()


def test_groups_whose_prompts_end_at_different_positions(vit):
    """Token ids per group (B, C, L): each group's EOT is read where it is, even when columns differ."""
    short = PromptLearner(["cat", "dog", "x"], vit, n_ctx=4, verbose=False)
    long = PromptLearner(["sea lion", "great pyrenees dog", "abyssinian"], vit, n_ctx=4, verbose=False)
    long.ctx.data.copy_(short.ctx.data)
    tokenized = torch.stack([short.tokenized_prompts, long.tokenized_prompts])
    prompts = torch.stack([short(), long()])
    fast = PromptTextEncoder(vit)(prompts, tokenized, short.shared_prefix_length)
    full = PromptTextEncoder(vit, truncate=False, share_prefix=False)(prompts, tokenized)
    assert (fast - full).abs().max().item() <= 1e-5


def test_plan_packs_each_class_to_its_own_end_sorted_by_length():
    eot = torch.tensor([[7, 9, 7, 8]])
    plan = packed_plan(eot, length=77, shared=5)
    assert plan.buckets == [(3, 2), (4, 1), (5, 1)]  # own positions 5..eot per class, shortest first
    own = plan.positions[5:].tolist()
    assert own == [5, 6, 7, 5, 6, 7, 5, 6, 7, 8, 5, 6, 7, 8, 9]
    assert plan.index[5:8].tolist() == [0 * 77 + 5, 0 * 77 + 6, 0 * 77 + 7]
    assert plan.index[-5:].tolist() == [1 * 77 + p for p in range(5, 10)]
    # EOT of class c is the last of its packed positions
    assert [own[i] for i in plan.read[0].tolist()] == [7, 9, 7, 8]


def test_text_flops_are_the_floor_and_far_below_padding(vit):
    """Forward and backward of the packed path execute the floor's FLOPs (within 10%); padding every class
    to the longest name and copying the prefix per class would not."""
    learner = PromptLearner(CLASSNAMES, vit, n_ctx=4, verbose=False)
    eot = learner.tokenized_prompts.argmax(-1).tolist()
    floor = prompt_floor_flops(eot, learner.shared_prefix_length, 64, 2, vit.text_projection.shape[1])
    counted = {}
    for name, encoder in (("packed", PromptTextEncoder(vit)), ("padded", PromptTextEncoder(vit, share_prefix=False))):
        leaf = learner.ctx.detach().clone().requires_grad_(True)
        with FlopCounterMode(display=False) as forward:
            features = encode(encoder, learner, leaf)
        with FlopCounterMode(display=False) as backward:
            features.sum().backward()
        counted[name] = (forward.get_total_flops(), backward.get_total_flops())
    assert floor["forward"] <= counted["packed"][0] <= 1.1 * floor["forward"]
    assert counted["packed"][1] <= 1.1 * floor["backward"]
    assert counted["padded"][0] > 1.3 * floor["forward"]


# ---------------------------------------------------------------------------------------- image tower
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_resnet_equals_the_unfused_tower_at_fp32_tolerance(channels_last):
    model = resnet_with_real_statistics()
    visual = model.visual
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    fast = inference_image_encoder(visual, channels_last=channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert all(type(m) is OneDnnConv2d for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(fast, ChannelsLast) == channels_last
    images = torch.randn(6, 3, RES, RES, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = visual(images), fast(images)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert expected.std() > 0.05  # not a comparison of constants
    with torch.enable_grad():  # gradients (or autocast, other devices) take nn.Conv2d's own path
        assert (fast(images) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert all(torch.equal(v, visual.state_dict()[k]) for k, v in before.items())  # the shared tower is untouched


def test_open_clip_modified_resnet_is_folded_too():
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=8, image_size=RES, width=16).eval()
    for bn in (m for m in visual.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 2.0)
    fast = fold_batchnorm(visual)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    images = torch.randn(2, 3, RES, RES)
    with torch.no_grad():
        assert (fast(images) - visual(images)).abs().max() <= 1e-5 * visual(images).abs().max()


def test_a_tower_with_nothing_to_fold_is_used_as_is(vit):
    assert inference_image_encoder(vit.visual) is vit.visual
    assert fold_batchnorm(vit.visual) is vit.visual


def test_tpt_with_the_folded_tower_predicts_as_the_straightforward_computation():
    """The harness's view encoder (folded, channels-last, chunked) against the reference computation on the
    unfused tower: same predictions, logits equal at the fast path's tolerance."""
    model = resnet_with_real_statistics(seed=1)
    settings = TPTSettings(n_views=8, selection_p=0.25, steps=1)
    views = torch.randn(4, 8, 3, RES, RES, generator=torch.Generator().manual_seed(3))
    source = WordsContext("a photo of a")
    learner = source.learner(CLASSNAMES, model)
    tuner = PromptTuner(learner, PromptTextEncoder(model), model.logit_scale.exp(), settings)
    encoder = ViewEncoder(model.visual, RES, torch.device("cpu"), max_chunk=3)
    assert isinstance(encoder.encoder, ChannelsLast) and encoder.chunk == 3
    features = encoder(views)
    fast = tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=True)
    reference = StraightforwardTPT(model, source.learner(CLASSNAMES, model), settings)
    for b in range(len(views)):
        logits, _ = reference(views[b])
        assert fast.logits[b].argmax() == logits.argmax()
        assert torch.allclose(fast.logits[b], logits, atol=1e-4)


def test_view_chunks_keep_every_activation_under_the_heap_block_limit(vit):
    model = build_tiny_clip("rn").float().eval().requires_grad_(False)  # 224 pixels
    encoder = ViewEncoder(model.visual, 224, torch.device("cpu"), max_chunk=10_000)
    per_view = largest_activation(encoder.encoder, 224)
    assert encoder.chunk * per_view <= HEAP_BLOCK_LIMIT < (encoder.chunk + 1) * per_view
    assert ViewEncoder(model.visual, 224, torch.device("cpu"), max_chunk=2).chunk == 2


HEAP_PROBE = """
import json, resource, sys, torch
from vlprompt.tta.tuner import reuse_freed_memory
in_effect = reuse_freed_memory()
def image():  # the working set of one chunk: several 24 MiB activations alive at once, then freed
    parts = [torch.ones(6 * 2**20) for _ in range(6)]
    return sum(float(p[0]) for p in parts)
image()
image()  # the heap settles over two images (the second may still extend its top once)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    image()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "in_effect": in_effect}))
"""


def test_freed_memory_is_reused_by_the_next_image_instead_of_faulted_in_again():
    """In a fresh process: 5 more 'images' of 144 MiB working set fault (almost) nothing in with the heap
    kept, and much of it again without (VLPROMPT_HEAP_REUSE=0, and glibc's mmap threshold held at its 128 KiB
    start: blocks are mapped and unmapped as the encoder's real activations are, which exceed the 32 MiB its
    dynamic threshold can rise to; 24 MiB blocks alone would make glibc's defaults vary run to run)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's allocator")
    counts = {}
    for value in ("1", "0"):
        env = {**os.environ, "VLPROMPT_HEAP_REUSE": value, "PYTHONPATH": str(REPO_ROOT)}
        if value == "0":
            env["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
        done = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, env=env,
                              check=True, cwd=REPO_ROOT)
        counts[value] = json.loads(done.stdout.strip().splitlines()[-1])
    pages = 5 * 6 * 24 * 2**20 // 4096
    assert counts["1"]["in_effect"] and not counts["0"]["in_effect"]
    assert counts["0"]["faults"] > 0.2 * pages
    assert counts["1"]["faults"] < 0.02 * pages


def test_gpu_check_runs_on_the_cpu_in_its_ci_sized_form(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --ci: the correctness pass agrees and every batch size reports a
    throughput and an ImageNet projection."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--ci",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ci_sized"] and result["correctness"]["same_predictions"]
    assert result["correctness"]["max_logit_difference"] < 1e-3
    assert [row["batch_images"] for row in result["throughput"]] == [1, 2, 4]
    assert all(row["images_per_second"] > 0 and row["imagenet_val_minutes"] > 0 for row in result["throughput"])
    assert "ImageNet (50,000) in" in done.stdout


# ------------------------------------------------------------------------------ chunks, autocast on the CPU
def test_views_in_chunks_give_the_features_of_one_pass(vit):
    """Heap-sized chunks (memory reuse across images) change nothing: the same features as all views at once,
    hence the same predictions."""
    views = torch.randn(2, 5, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    chunked = ViewEncoder(vit.visual, 224, torch.device("cpu"), max_chunk=3)
    whole = ViewEncoder(vit.visual, 224, torch.device("cpu"), max_chunk=10)
    assert chunked.chunk == 3 and whole.chunk == 10
    got, expected = chunked(views), whole(views)
    assert got.shape == expected.shape == (2, 5, vit.text_projection.shape[1])
    assert (got - expected).abs().max().item() <= 1e-6 * expected.abs().max().item()


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
def test_the_autocast_path_runs_on_the_cpu(vit, amp_dtype):
    """The GPU's precision path (autocast in ``amp_dtype``; fp16 with the reference's loss scaler) runs on CPU
    tensors too: fp32 logits, close to the fp32 path's, the prompt actually tuned."""
    views = torch.randn(3, 8, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    source = WordsContext("a photo of a")
    results = {}
    for name, amp in (("fp32", False), ("amp", True)):
        learner = source.learner(CLASSNAMES, vit)
        settings = TPTSettings(n_views=8, selection_p=0.25, steps=1, amp=amp, amp_dtype=amp_dtype)
        scaler = torch.amp.GradScaler("cpu", init_scale=1000) if amp and amp_dtype == "float16" else None
        tuner = PromptTuner(learner, PromptTextEncoder(vit), vit.logit_scale.exp(), settings, scaler)
        encoder = ViewEncoder(vit.visual, 224, torch.device("cpu"), amp=amp, amp_dtype=getattr(torch, amp_dtype))
        features = encoder(views)
        init = source.initial_context(learner, features[:, 0])
        results[name] = (tuner.tune(normalize(features), init, same_start=True), init)
    (fp32, init), (amp, _) = results["fp32"], results["amp"]
    assert amp.logits.dtype == torch.float32 and torch.isfinite(amp.logits).all()
    assert not torch.equal(amp.ctx, init.expand_as(amp.ctx))  # a step was taken
    spread, difference = fp32.logits.abs().max().item(), (amp.logits - fp32.logits).abs().max().item()
    assert 0 < difference <= 0.05 * spread  # computed in the lower precision, yet close
