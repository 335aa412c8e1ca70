"""C-TPT, Zero, MTA and TDA against what their own code output on the same inputs (tests/data/tta_reference:
a tiny random CLIP, seeded views), at fp32 tolerance: selection, losses, updates, caches and predictions;
and the expected calibration error against C-TPT's."""

from __future__ import annotations

import math

import pytest
import torch
from tta_reference import (
    CLASSNAMES,
    SETTINGS,
    load_outputs,
    reference_clip,
    reference_labels,
    reference_views,
)

from vlprompt.modeling import PromptTextEncoder, build_text_classifier, normalize
from vlprompt.tta.calibration import bin_boundaries, calibration_bins, expected_calibration_error
from vlprompt.tta.mta import mta_logits
from vlprompt.tta.objective import calibrated_entropy, text_dispersion
from vlprompt.tta.sources import WordsContext
from vlprompt.tta.tda import StreamItem, TDACaches, TDASettings, stream_item
from vlprompt.tta.tuner import PromptTuner, TPTSettings, encode_views
from vlprompt.tta.zero import break_tie, confidence_order, zero_votes

LOGITS = {"rtol": 1e-5, "atol": 1e-4}  # fp32 rounding of logits of scale up to 100


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def clip():
    return reference_clip()


def view_features(clip, case: str) -> torch.Tensor:
    """Normalised view features ``(images, views, E)`` of a case, as the harness computes them."""
    return normalize(encode_views(clip.visual, reference_views(case)))


def words_text(clip) -> torch.Tensor:
    """The class text features of "a photo of a {class}." ``(C, E)`` (the references' prompt)."""
    source = WordsContext("a photo of a")
    learner = source.learner(CLASSNAMES, clip)
    with torch.no_grad():
        text = PromptTextEncoder(clip)(learner.assemble(learner.ctx[None]), learner.tokenized_prompts,
                                       shared_prefix=learner.shared_prefix_length)
    return normalize(text.float())[0]


# -------------------------------------------------------------------------------------------------- C-TPT
@pytest.mark.parametrize("share_first_step", [True, False])
def test_ctpt_selection_loss_update_and_prediction_equal_its_code(clip, share_first_step):
    ref, settings = load_outputs("ctpt"), SETTINGS["ctpt"]
    source = WordsContext("a photo of a")
    learner = source.learner(CLASSNAMES, clip)
    tuner = PromptTuner(learner, PromptTextEncoder(clip), clip.logit_scale.exp(),
                        TPTSettings(selection_p=settings["selection_p"], steps=1, lr=settings["lr"]),
                        share_first_step=share_first_step, objective=calibrated_entropy(settings["lambda_term"]))
    features = encode_views(clip.visual, reference_views("ctpt"))
    init = source.initial_context(learner, features[:, 0])
    result = tuner.tune(normalize(features), init, same_start=True)

    assert torch.equal(result.selected, ref["selected"])
    torch.testing.assert_close(result.loss.double(), ref["loss"], rtol=1e-5, atol=1e-5)
    diff = (result.ctx - ref["ctx"]).abs()  # AdamW: see test_tpt.assert_same_context
    assert diff.max() < 0.02 * settings["lr"] and (diff > 1e-6).float().mean() < 0.01
    torch.testing.assert_close(result.logits, ref["logits"], **LOGITS)
    assert torch.equal(result.logits.argmax(-1), ref["prediction"])
    torch.testing.assert_close(result.logits.softmax(-1).amax(-1).double(), ref["confidence"], rtol=1e-5, atol=1e-6)


def test_ctpt_dispersion_is_its_atfd(clip):
    ref = load_outputs("ctpt")
    atfd = float(text_dispersion(words_text(clip)))
    assert atfd == pytest.approx(float(ref["atfd"][0]), rel=1e-5)  # every image starts from the same prompt
    # Made-up features: the mean distance to the centroid, which the term's weight pushes up.
    text = normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert float(text_dispersion(text)) == pytest.approx(math.sqrt(0.5))


def test_ece_equals_ctpt_code_and_its_binning():
    ref = load_outputs("ctpt")
    correct = (ref["prediction"] == reference_labels("ctpt")).tolist()
    confidences = ref["confidence"].tolist()
    assert expected_calibration_error(confidences, correct, 20) == pytest.approx(float(ref["ece20"]), abs=1e-9)
    # A confidence on a bin's upper edge belongs to that bin (lower < c <= upper); 0 is in none but counts in N.
    _, upper = bin_boundaries(4)[1]
    bins = calibration_bins([upper, 0.0], [True, False], 4)
    assert bins[1] == (1, 1.0, upper) and sum(n for n, _, _ in bins) == 1
    assert expected_calibration_error([upper, 0.0], [True, False], 4) == pytest.approx(100 * (1 - upper) / 2)
    assert expected_calibration_error([0.9] * 10, [True] * 9 + [False], 15) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------- Zero
def test_zero_order_and_votes_equal_its_code(clip):
    ref = load_outputs("zero")
    logits = view_features(clip, "zero") @ words_text(clip).t()
    scale = clip.logit_scale.exp()
    for image, image_logits in enumerate(logits):
        assert torch.equal(confidence_order(image_logits, scale), ref["order"][image])
        assert torch.equal(zero_votes(image_logits, scale, 0.3), ref["votes"][image]), f"image {image}"
    # Ties happened on these inputs and were broken as its code does.
    assert len(ref["tie_images"]) > 0
    for image, pred in zip(ref["tie_images"].tolist(), ref["tie_predictions"].tolist()):
        assert int(zero_votes(logits[image], scale, 0.3).argmax()) == pred


def test_zero_tie_break_greedy_and_its_bitwise_not_fallback():
    ref = load_outputs("zero")
    fallbacks = 0
    for logits, ties, pred in zip(ref["break_logits"], ref["break_ties"], ref["break_predictions"]):
        ties = ties.tolist()
        assert break_tie(ties, logits) == int(pred)
        fallbacks += not any(p in ties for p in logits.argmax(1).tolist())
    assert fallbacks >= 3  # the path where its ~ties masks classes C-1-t


# ---------------------------------------------------------------------------------------------------- MTA
def test_mta_mode_logits_equal_its_code(clip):
    ref, settings = load_outputs("mta"), SETTINGS["mta"]
    features = view_features(clip, "mta")
    text = words_text(clip)
    ours = torch.stack([mta_logits(f, text, clip.logit_scale.exp(), settings["lambda_y"], settings["lambda_q"])
                        for f in features])
    torch.testing.assert_close(ours, ref["logits"], **LOGITS)


# ---------------------------------------------------------------------------------------------------- TDA
def tda_settings() -> TDASettings:
    s = SETTINGS["tda"]
    pos, neg = s["positive"], s["negative"]
    return TDASettings(pos_shots=pos["shot_capacity"], pos_alpha=pos["alpha"], pos_beta=pos["beta"],
                       neg_shots=neg["shot_capacity"], neg_alpha=neg["alpha"], neg_beta=neg["beta"],
                       entropy_window=tuple(neg["entropy_threshold"]), mask_window=tuple(neg["mask_threshold"]))


def test_tda_template_ensemble_is_its_classifier(clip):
    ref = load_outputs("tda")
    classifier = build_text_classifier(clip, CLASSNAMES, SETTINGS["tda"]["template"])
    torch.testing.assert_close(classifier, ref["clip_weights"].t(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["tda_multi", "tda_single"])
def test_tda_stream_equals_its_code(clip, case):
    ref = load_outputs("tda")
    classifier = build_text_classifier(clip, CLASSNAMES, SETTINGS["tda"]["template"])
    caches = TDACaches(classifier, tda_settings())
    logits, labels, entropies = [], [], []
    for features in view_features(clip, case):
        item = stream_item(features, classifier, caches.settings)
        labels.append(item.pseudo_label)
        entropies.append(item.entropy)
        logits.append(caches.step(item))
    assert labels == ref[f"{case}_pseudo_label"].tolist()
    torch.testing.assert_close(torch.tensor(entropies, dtype=torch.float64), ref[f"{case}_entropy"], rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(torch.stack(logits), ref[f"{case}_logits"], **LOGITS)
    # Both caches were used, and the positive one filled some class to its capacity.
    assert caches.negative and max(len(v) for v in caches.positive.values()) == caches.settings.pos_shots


def test_tda_caches_rebuilt_from_logged_rows_are_the_same(clip):
    classifier = build_text_classifier(clip, CLASSNAMES, SETTINGS["tda"]["template"])
    live = TDACaches(classifier, tda_settings())
    rows = []
    for features in view_features(clip, "tda_single")[:25]:
        item = stream_item(features, classifier, live.settings)
        live.step(item)
        rows.append({"tda": item.to_row(live.settings.mask_window[0])})
    rebuilt = TDACaches(classifier, tda_settings())
    rebuilt.replay(rows)
    probe = stream_item(view_features(clip, "tda_single")[30], classifier, live.settings)
    assert torch.equal(live.logits(probe), rebuilt.logits(probe))
    item = StreamItem.from_row(rows[0]["tda"], len(CLASSNAMES))
    assert item.feature.dtype == torch.float32 and item.feature.shape == classifier.shape[1:]
