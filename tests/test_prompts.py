"""Prompt assembly and the truncated text encoder against clip's own encode_text on written-out prompts."""

from __future__ import annotations

import pytest
import torch
from conftest import written_out

from vlprompt.prompts import PromptLearner, build_text_classifier, tokenize
from vlprompt.text_encoder import PromptTextEncoder
from vlprompt.tiny_clip import build_tiny_clip

CLASSNAMES = ["abyssinian", "american_bulldog", "great pyrenees dog", "x", "newfoundland"]
# Single-BPE-token words, so a context made of their embeddings is exactly the written-out prompt.
WORDS = ["a", "photo", "of", "the", "big", "small", "red", "dog", "cat", "picture", "nice", "good"]


@pytest.fixture(scope="module")
def clip_model():
    return build_tiny_clip("vit", seed=0).float().eval()


def word_embeddings(clip_model, words: list[str]) -> torch.Tensor:
    ids = tokenize(" ".join(words))[0, 1 : 1 + len(words)]
    return clip_model.token_embedding(ids).detach()


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_prompt_features_equal_clip_encode_text(clip_model, position, csc):
    n_ctx = 4
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=n_ctx, csc=csc, class_token_position=position, verbose=False)
    if csc:
        per_class = [WORDS[i : i + n_ctx] for i in range(len(CLASSNAMES))]
        ctx = torch.stack([word_embeddings(clip_model, w) for w in per_class])
    else:
        per_class = [WORDS[:n_ctx]] * len(CLASSNAMES)
        ctx = word_embeddings(clip_model, WORDS[:n_ctx])
    with torch.no_grad():
        learner.ctx.copy_(ctx)
        ours = PromptTextEncoder(clip_model)(learner(), learner.tokenized_prompts)
        texts = [written_out(w, name, position) for w, name in zip(per_class, CLASSNAMES)]
        reference = clip_model.encode_text(tokenize(texts))
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_truncated_encoding_equals_full_length_with_gradients(clip_model, position, csc):
    torch.manual_seed(0)
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=8, csc=csc, class_token_position=position, verbose=False)
    image_features = torch.randn(3, clip_model.text_projection.shape[1])
    results = []
    for truncate in (True, False):
        learner.zero_grad()
        encoder = PromptTextEncoder(clip_model, truncate=truncate)
        text = encoder(learner(), learner.tokenized_prompts)
        logits = image_features @ (text / text.norm(dim=-1, keepdim=True)).t()
        logits.logsumexp(dim=-1).sum().backward()
        results.append((text.detach(), logits.detach(), learner.ctx.grad.clone()))
    (fast_text, fast_logits, fast_grad), (full_text, full_logits, full_grad) = results
    assert (fast_text - full_text).abs().max().item() <= 1e-5
    assert torch.equal(fast_logits.argmax(-1), full_logits.argmax(-1))
    assert (fast_grad - full_grad).abs().max().item() <= 1e-5
    assert fast_grad.abs().sum() > 0


def test_truncation_actually_shortens(clip_model, monkeypatch):
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=4, verbose=False)
    seen = []
    block = clip_model.transformer.resblocks[0]
    original = block.attn.forward

    def spy(query, *args, **kwargs):
        seen.append(query.shape[0])
        return original(query, *args, **kwargs)

    monkeypatch.setattr(block.attn, "forward", spy)
    with torch.no_grad():
        PromptTextEncoder(clip_model)(learner(), learner.tokenized_prompts)
    longest_eot = int(learner.tokenized_prompts.argmax(-1).max())
    assert seen == [longest_eot + 1]
    assert seen[0] < 77


def test_batched_context_gives_one_prompt_set_per_item(clip_model):
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=4, verbose=False)
    ctx = torch.randn(3, 4, learner.ctx.shape[-1])
    batched = learner.assemble(ctx)
    assert batched.shape == (3, len(CLASSNAMES), 77, learner.ctx.shape[-1])
    for i in range(3):
        assert torch.equal(batched[i], learner.assemble(ctx[i]))


def test_ctx_init_words_and_checkpoint_names(clip_model):
    learner = PromptLearner(CLASSNAMES, clip_model, n_ctx=16, ctx_init="a_photo_of_a", verbose=False)
    assert learner.n_ctx == 4
    assert torch.allclose(learner.ctx, word_embeddings(clip_model, ["a", "photo", "of", "a"]))
    state = learner.state_dict()
    assert list(state) == ["ctx", "token_prefix", "token_suffix"]
    assert state["token_prefix"].shape == (len(CLASSNAMES), 1, 64)
    assert state["token_suffix"].shape == (len(CLASSNAMES), 77 - 1 - 4, 64)


def test_random_init_is_normal_with_std_002(clip_model):
    torch.manual_seed(0)
    learner = PromptLearner(["a"] * 2, clip_model, n_ctx=64, verbose=False)
    assert learner.ctx.shape == (64, 64)
    assert abs(learner.ctx.std().item() - 0.02) < 0.002
    assert learner.prompt_prefix == " ".join(["X"] * 64)


def test_text_classifier_single_template_and_ensemble(clip_model):
    names = ["cat", "dog_house"]
    with torch.no_grad():
        single = build_text_classifier(clip_model, names, ["a photo of a {}."])
        direct = clip_model.encode_text(tokenize(["a photo of a cat.", "a photo of a dog house."]))
        direct = direct / direct.norm(dim=-1, keepdim=True)
        assert torch.allclose(single, direct, atol=1e-6)
        templates = ["a photo of a {}.", "art of the {}."]
        ensemble = build_text_classifier(clip_model, names, templates)
        parts = [build_text_classifier(clip_model, names, [t]) for t in templates]
        mean = (parts[0] + parts[1]) / 2
        assert torch.allclose(ensemble, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
