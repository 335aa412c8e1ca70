"""GenPT: the InfoNCE view term, class-wise mixing, equivalence to CoOp with both terms off, learning,
checkpoints, ablation switches and the base-to-novel scripts."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, train_args

from vlprompt.cli import build_parser, main, setup_cfg
from vlprompt.compat import build_trainer
from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.mixup import mixed_target_loss
from vlprompt.mutual_info import (
    MI_ESTIMATORS,
    PairCritic,
    cosine_scores,
    dv_bound,
    infonce_bound,
    jsd_bound,
    mi_bound,
)
from vlprompt.trainers.genpt import ClassFeatureMemory, GenPT, view_infonce


def genpt_args(root, out, backbone, *extra, epochs=2, flags=()):
    return train_args(
        root, out, "GenPT", "trainers/GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml", "--seed", "1", *flags,
        "MODEL.BACKBONE.NAME", backbone, "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "4",
        "DATALOADER.NUM_WORKERS", "0", "TRAINER.GENPT.PREC", "fp32", "OPTIM.LR", "0.05", *extra,
    )


# ------------------------------------------------------------------------------------------ the MI term
def test_view_infonce_equals_direct_computation():
    torch.manual_seed(0)
    soft = F.normalize(torch.randn(6, 8), dim=-1)
    hand = F.normalize(torch.randn(6, 8), dim=-1)
    tau = 0.07
    total = 0.0
    for c in range(6):
        s_row = [float(soft[c] @ hand[k]) / tau for k in range(6)]
        h_row = [float(hand[c] @ soft[k]) / tau for k in range(6)]
        total -= s_row[c] - math.log(sum(math.exp(v) for v in s_row))
        total -= h_row[c] - math.log(sum(math.exp(v) for v in h_row))
    assert view_infonce(soft, hand, tau).item() == pytest.approx(total / 12, rel=1e-5)


def test_view_infonce_is_lowest_when_views_align_class_by_class():
    torch.manual_seed(1)
    hand = F.normalize(torch.randn(10, 16), dim=-1)
    aligned = view_infonce(hand, hand, 0.07)
    shuffled = view_infonce(hand[torch.randperm(10)], hand, 0.07)
    noisy = view_infonce(F.normalize(hand + 0.5 * torch.randn(10, 16), dim=-1), hand, 0.07)
    assert aligned < noisy < shuffled
    assert math.log(10) - aligned.item() <= math.log(10)  # the MI estimate is bounded by log C
    assert math.log(10) - aligned.item() > 0.9 * math.log(10)


# ----------------------------------------------------------------------------------- the MI estimators
def fixed_scores() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(5, 5) * 2 + 3 * torch.eye(5)


def test_each_bound_equals_a_direct_computation():
    scores = fixed_scores()
    n = len(scores)
    rows = [[float(scores[i, j]) for j in range(n)] for i in range(n)]
    joint = [rows[i][i] for i in range(n)]
    marginal = [rows[i][j] for i in range(n) for j in range(n) if i != j]

    def log_softmax_at(values, k):
        return values[k] - math.log(sum(math.exp(v) for v in values))

    nce = sum(log_softmax_at(rows[i], i) + log_softmax_at([rows[j][i] for j in range(n)], i) for i in range(n))
    assert infonce_bound(scores).item() == pytest.approx(math.log(n) + nce / (2 * n), rel=1e-5)
    dv = sum(joint) / n - math.log(sum(math.exp(v) for v in marginal) / len(marginal))
    assert dv_bound(scores).item() == pytest.approx(dv, rel=1e-5)

    def softplus(v):
        return math.log1p(math.exp(v))

    jsd = -sum(softplus(-v) for v in joint) / n - sum(softplus(v) for v in marginal) / len(marginal) + math.log(4)
    assert jsd_bound(scores).item() == pytest.approx(jsd, rel=1e-5)
    for name, bound in (("infonce", infonce_bound), ("jsd", jsd_bound), ("dv", dv_bound)):
        assert mi_bound(name, scores).item() == bound(scores).item()
    # the InfoNCE bound is the view term the cosine critic has always used
    soft, hand = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    assert infonce_bound(soft @ hand.t() / 0.07).item() == pytest.approx(
        math.log(5) - view_infonce(soft, hand, 0.07).item(), abs=1e-6)
    with pytest.raises(ValueError, match="square"):
        dv_bound(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="one of"):
        mi_bound("nwj", scores)


def test_learned_critic_starts_as_the_cosine_critic():
    torch.manual_seed(3)
    x, y = torch.randn(6, 8), torch.randn(7, 8)
    critic = PairCritic(8, 8, hidden=16, tau=0.07)
    assert torch.allclose(critic(x, y), cosine_scores(x, y, 0.07), atol=1e-5)
    assert critic(x, y).shape == (6, 7)


def train_estimate(estimator: str, dependent: bool, steps: int = 150) -> tuple[float, float]:
    """(first, last) estimate of a learned critic trained by Adam on correlated Gaussians y = x + 0.5 e
    (I(X; Y) = 2 log 5 = 3.2 nats over 4 dimensions), or on independent ones."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    critic = PairCritic(4, 4, hidden=32, tau=1.0)
    optim = torch.optim.Adam(critic.parameters(), lr=0.01)
    values = []
    for _ in range(steps):
        x = torch.randn(64, 4, generator=generator)
        noise = torch.randn(64, 4, generator=generator)
        y = x + 0.5 * noise if dependent else noise
        estimate = mi_bound(estimator, critic(x, y))
        values.append(estimate.item())
        optim.zero_grad()
        (-estimate).backward()
        optim.step()
    return sum(values[:10]) / 10, sum(values[-10:]) / 10


@pytest.mark.parametrize("estimator", MI_ESTIMATORS)
def test_each_estimator_rises_with_training_where_there_is_dependence(estimator):
    first, last = train_estimate(estimator, dependent=True)
    _, independent = train_estimate(estimator, dependent=False)
    assert last > first + 0.1, (first, last)
    assert last > independent + 0.3, (last, independent)
    if estimator != "jsd":  # lower bounds on I(X; Y) in nats (jsd bounds 2 JS instead)
        assert last < 2 * math.log(5) + 0.1


# ------------------------------------------------------------------------------------- class-wise mixing
def bare_genpt(mode="intra_class_mixup", num_classes=4, dim=8):
    """A GenPT with just the state the mixing code uses (no CLIP, no data)."""
    from yacs.config import CfgNode

    trainer = object.__new__(GenPT)
    trainer.cfg = CfgNode({"TRAINER": {"GENPT": {"AUG_MODE": mode, "AUG_ALPHA": 1.0}}})
    trainer.memory = ClassFeatureMemory(num_classes, 3, dim, torch.device("cpu"))
    trainer.mix_generator = torch.Generator().manual_seed(0)
    return trainer


def test_intra_class_mixup_keeps_labels_and_mixes_only_within_a_class():
    trainer = bare_genpt()
    features = F.normalize(torch.randn(6, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    trainer.memory.update(F.normalize(torch.randn(1, 8), dim=-1), torch.tensor([2]))
    partners, mask = trainer.intra_class_partners(features, labels)
    assert mask.tolist() == [True] * 6
    for i, label in enumerate(labels.tolist()):
        same_class_batch = [features[j] for j in range(6) if labels[j] == label and j != i]
        candidates = same_class_batch or [trainer.memory.features[label, 0]]
        assert any(torch.equal(partners[i], c) for c in candidates)
    mixed, (label_a, label_b, _), _ = trainer.augmented_features(None, features, labels)
    assert torch.equal(label_a, labels) and torch.equal(label_b, labels)
    assert torch.allclose(mixed.norm(dim=-1), torch.ones(6))


def test_a_class_seen_once_takes_its_partner_from_the_memory():
    trainer = bare_genpt()
    features = F.normalize(torch.randn(2, 8), dim=-1)
    labels = torch.tensor([1, 3])
    indices = torch.tensor([10, 11])
    _, mask = trainer.intra_class_partners(features, labels, indices)
    assert mask.tolist() == [False, False]  # empty memory, no same-class sample in the batch
    trainer.memory.update(features[1:], labels[1:], indices[1:])  # image 11 itself: not a partner
    _, mask = trainer.intra_class_partners(features, labels, indices)
    assert mask.tolist() == [False, False]
    remembered = F.normalize(torch.randn(1, 8), dim=-1)
    trainer.memory.update(remembered, torch.tensor([3]), torch.tensor([12]))
    partners, mask = trainer.intra_class_partners(features, labels, indices)
    assert mask.tolist() == [False, True]
    assert torch.equal(partners[1], remembered[0])


def test_memory_keeps_the_last_features_per_class():
    memory = ClassFeatureMemory(2, 2, 3, torch.device("cpu"))
    for value in (1.0, 2.0, 3.0):
        memory.update(torch.full((1, 3), value), torch.tensor([0]))
    assert sorted(memory.features[0, :, 0].tolist()) == [2.0, 3.0]
    assert memory.sample(1, torch.Generator()) is None


def test_cross_class_mixup_mixes_with_another_class_and_mixes_the_targets():
    trainer = bare_genpt("cross_class_mixup")
    features = F.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 2])
    remembered = F.normalize(torch.randn(1, 8), dim=-1)
    trainer.memory.update(remembered, torch.tensor([3]), torch.tensor([9]))  # class 3 only in the memory
    seen_memory = False
    for _ in range(20):
        mixed, (label_a, label_b, weight_a), mask = trainer.augmented_features(None, features, labels)
        assert mask.all() and torch.equal(label_a, labels)
        assert (label_b != labels).all()  # always another class
        for i in range(4):
            partner_class = int(label_b[i])
            candidates = [features[j] for j in range(4) if labels[j] == partner_class] or [remembered[0]]
            w = weight_a[i]
            assert any(torch.allclose(mixed[i], F.normalize(w * features[i] + (1 - w) * c, dim=0), atol=1e-6)
                       for c in candidates)
            seen_memory |= partner_class == 3
    assert seen_memory
    # one class at hand and nothing else remembered: no partner, the sample stays itself
    lonely = bare_genpt("cross_class_mixup")
    mixed, (_, label_b, weight_a), mask = lonely.augmented_features(None, features[:2], labels[:2])
    assert not mask.any() and torch.equal(label_b, labels[:2]) and torch.equal(weight_a, torch.ones(2))
    assert torch.allclose(mixed, features[:2], atol=1e-6)


def test_mixed_target_loss_weighs_both_classes_over_samples_with_a_partner():
    logits = torch.randn(3, 4)
    label_a, label_b = torch.tensor([0, 1, 2]), torch.tensor([3, 1, 0])
    weight = torch.tensor([0.25, 1.0, 0.5])
    mask = torch.tensor([True, False, True])
    expected = sum(
        float(weight[i]) * -F.log_softmax(logits[i], 0)[label_a[i]].item()
        + (1 - float(weight[i])) * -F.log_softmax(logits[i], 0)[label_b[i]].item() for i in (0, 2)
    ) / 2
    assert mixed_target_loss(logits, label_a, label_b, weight, mask).item() == pytest.approx(expected, rel=1e-5)
    assert mixed_target_loss(logits, label_a, label_b, weight, torch.zeros(3, dtype=torch.bool)).item() == 0.0


# ------------------------------------------------------------------------------------------- training
def test_with_both_terms_off_genpt_updates_equal_coops(pets_root, tiny_vit, tmp_path):
    genpt = main(genpt_args(pets_root, tmp_path / "genpt", tiny_vit, "TRAINER.GENPT.LAMBDA_MI", "0.0",
                            "TRAINER.GENPT.LAMBDA_AUG", "0.0"))
    coop = main(train_args(
        pets_root, tmp_path / "coop", "CoOp", "trainers/GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml", "--seed", "1",
        "MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "4",
        "DATALOADER.NUM_WORKERS", "0", "OPTIM.LR", "0.05", "TRAINER.COOP.N_CTX", "4",
        "TRAINER.COOP.CTX_INIT", "a photo of a", "TRAINER.COOP.PREC", "fp32",
    ))
    ctx_genpt = load_checkpoint(str(tmp_path / "genpt" / "prompt_learner" / "model.pth.tar-2"))["state_dict"]["ctx"]
    ctx_coop = load_checkpoint(str(tmp_path / "coop" / "prompt_learner" / "model.pth.tar-2"))["state_dict"]["ctx"]
    assert torch.allclose(ctx_genpt, ctx_coop, atol=1e-6)
    from vlprompt.clip_backbone import load_clip
    from vlprompt.prompts import tokenize

    clip_model = load_clip(tiny_vit).float()
    initial = clip_model.token_embedding(tokenize("a photo of a"))[0, 1:5]
    assert (ctx_genpt - initial).abs().max() > 1e-3  # it did train
    assert genpt.test_results["accuracy"] == coop.test_results["accuracy"]


def test_training_lowers_every_loss_term(pets_root, tiny_vit, tmp_path):
    from vlprompt.engine.seeding import set_random_seed

    # Mixup within a class: its target is the sample's own class, so its loss can fall on one repeated
    # batch (mixed targets across classes keep a floor that random partners move around).
    cfg = setup_cfg(build_parser().parse_args(genpt_args(pets_root, tmp_path, tiny_vit, "TRAINER.GENPT.AUG_MODE",
                                                         "intra_class_mixup", epochs=50)))
    set_random_seed(cfg.SEED)  # train.py seeds before building; building directly must too
    trainer = build_trainer(cfg)
    batch = next(iter(trainer.train_loader_x))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    for group in trainer.optim.param_groups:
        group["lr"] = 0.05
    history = [trainer.forward_backward(batch) for _ in range(24)]
    for term in ("loss_ce", "loss_mi", "loss_aug", "loss"):
        first = sum(h[term] for h in history[:4]) / 4
        last = sum(h[term] for h in history[-4:]) / 4
        assert last < first, (term, first, last)
    assert sum(h["mi"] for h in history[-4:]) > sum(h["mi"] for h in history[:4])
    # the memory never pairs an image with itself: with one batch repeated and every class at most
    # once in it, partners come from other images only, so the mixed loss differs from the plain one
    assert any(h["loss_aug"] != h["loss_ce"] for h in history[1:])


def test_checkpoint_is_coops_plus_genpt_state_and_eval_reproduces(pets_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "train"
    trainer = main(genpt_args(pets_root, out, tiny_vit, "TRAIN.PRINT_FREQ", "1"))
    printed = capsys.readouterr().out
    assert all(f" {term} " in printed for term in ("loss_ce", "loss_mi", "mi", "loss_aug"))
    checkpoint = load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-2"))
    assert list(checkpoint["state_dict"]) == ["ctx", "token_prefix", "token_suffix"]
    assert checkpoint["genpt"]["templates"] == ["a photo of a {}, a type of pet."]
    assert int(checkpoint["genpt"]["memory"]["count"].sum()) > 0
    torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)  # no pickled objects

    evaluated = main(genpt_args(pets_root, tmp_path / "eval", tiny_vit,
                                flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "2")))
    assert evaluated.test_results["accuracy"] == trainer.test_results["accuracy"]


@pytest.mark.parametrize(
    ("opts", "present", "absent"),
    [
        (("TRAINER.GENPT.LAMBDA_MI", "0.0"), {"loss_aug"}, {"loss_mi", "mi"}),
        (("TRAINER.GENPT.AUG_MODE", "none"), {"loss_mi"}, {"loss_aug"}),
        (("TRAINER.GENPT.AUG_MODE", "inter_class_mixup"), {"loss_mi", "loss_aug"}, set()),
        (("TRAINER.GENPT.AUG_MODE", "pixel_mixup"), {"loss_mi", "loss_aug"}, set()),
        (("TRAINER.GENPT.TEMPLATE_SET", "ensemble", "TRAINER.GENPT.FUSION_ALPHA", "0.5"), {"loss_mi"}, set()),
        (("TRAINER.GENPT.AUG_MODE", "cross_class_mixup", "TRAINER.GENPT.LAMBDA_MI_VISUAL", "1.0"),
         {"loss_mi", "mi_visual", "loss_aug"}, set()),
        (("TRAINER.GENPT.MI_ESTIMATOR", "jsd", "TRAINER.GENPT.MI_CRITIC", "learned"), {"loss_mi", "mi"}, set()),
        (("TRAINER.GENPT.MI_ESTIMATOR", "dv", "TRAINER.GENPT.MI_CRITIC", "learned", "TRAINER.GENPT.LAMBDA_MI", "0.0",
          "TRAINER.GENPT.LAMBDA_MI_VISUAL", "1.0", "TRAINER.GENPT.AUG_MODE", "none"), {"mi_visual"},
         {"loss_mi", "loss_aug"}),
        (("TRAINER.GENPT.LAMBDA_MI_VISUAL", "1.0", "TRAINER.GENPT.AUG_MODE", "pixel_mixup"), {"mi_visual"}, set()),
    ],
)
def test_ablation_switches(pets_root, tiny_vit, tmp_path, opts, present, absent):
    cfg = setup_cfg(build_parser().parse_args(genpt_args(pets_root, tmp_path, tiny_vit, *opts)))
    trainer = build_trainer(cfg)
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert present <= set(summary) and not absent & set(summary)
    assert all(math.isfinite(v) for v in summary.values())


def test_custom_templates_must_have_a_placeholder(pets_root, tiny_vit, tmp_path):
    args = genpt_args(pets_root, tmp_path, tiny_vit, "TRAINER.GENPT.TEMPLATE_SET", "custom",
                      "TRAINER.GENPT.TEMPLATES", "['a photo']")
    with pytest.raises(ValueError, match="TRAINER.GENPT.TEMPLATES"):
        main(args)


def test_base2new_scripts_train_and_test_end_to_end(pets_root, tiny_vit, tmp_path):
    env = {**os.environ, "DATA": pets_root, "PYTHON": sys.executable, "OUTPUT_ROOT": str(tmp_path / "output")}
    opts = ["MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.MAX_EPOCH", "1", "DATALOADER.NUM_WORKERS", "0",
            "TRAINER.GENPT.PREC", "fp32", "DATASET.NUM_SHOTS", "2"]
    for script in ("base2new_train.sh", "base2new_test.sh"):
        proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "genpt" / script), "oxford_pets", "1", *opts],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    tail = "oxford_pets/shots_16/GenPT/vit_b16_c4_ep10_batch4_ctxv1/seed1"
    assert (tmp_path / "output" / "base2new" / "train_base" / tail / "prompt_learner" / "model.pth.tar-1").is_file()
    test_log = (tmp_path / "output" / "base2new" / "test_new" / tail / "log.txt").read_text()
    assert "SUBSAMPLE NEW CLASSES!" in test_log and "* accuracy:" in test_log


def test_tpt_recognises_a_genpt_checkpoint_and_starts_from_its_context(pets_root, tiny_vit, tmp_path, capsys):
    from vlprompt.tta.sources import context_from_checkpoint

    out = tmp_path / "genpt"
    trained = main(genpt_args(pets_root, out, tiny_vit, epochs=1))
    source = context_from_checkpoint(str(out))
    assert source.kind == "genpt"
    saved = load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    assert torch.equal(source.ctx.cpu(), saved.cpu())

    # with no tuning step and only the original view, TPT predicts what GenPT itself predicts
    tpt = main(train_args(
        pets_root, tmp_path / "tpt", "TPT", "trainers/TPT/vit_b16.yaml", "--seed", "1",
        "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0", "TRAINER.TPT.LOAD", str(out),
        "TRAINER.TPT.STEPS", "0", "TRAINER.TPT.N_VIEWS", "1",
    ))
    assert "genpt" in capsys.readouterr().out.lower()
    assert tpt.test_results["accuracy"] == trained.test_results["accuracy"]


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (("TRAINER.GENPT.MI_ESTIMATOR", "nwj"), "TRAINER.GENPT.MI_ESTIMATOR"),
        (("TRAINER.GENPT.MI_CRITIC", "mlp"), "TRAINER.GENPT.MI_CRITIC"),
        (("TRAINER.GENPT.AUG_MODE", "cutmix"), "TRAINER.GENPT.AUG_MODE"),
        (("TRAINER.GENPT.MI_CRITIC_LR", "0.0"), "MI_CRITIC_LR"),
        (("TRAINER.GENPT.LAMBDA_MI", "-1.0"), "LAMBDA_MI"),
        (("TRAINER.GENPT.LAMBDA_MI_VISUAL", "1.0", "DATALOADER.TRAIN_X.BATCH_SIZE", "1"), "BATCH_SIZE >= 2"),
    ],
)
def test_bad_mi_and_mixup_settings_are_one_clear_error_before_work(pets_root, tiny_vit, tmp_path, opts, message):
    from vlprompt.errors import UserError

    with pytest.raises(UserError, match=message):
        main(genpt_args(pets_root, tmp_path, tiny_vit, *opts))
    assert not (tmp_path / "prompt_learner").exists()


LEARNED = ("TRAINER.GENPT.MI_CRITIC", "learned", "TRAINER.GENPT.LAMBDA_MI_VISUAL", "1.0",
           "TRAINER.GENPT.MI_ESTIMATOR", "dv", "TRAINER.GENPT.AUG_MODE", "cross_class_mixup")


def test_learned_critic_leaves_the_global_random_stream_alone(pets_root, tiny_vit, tmp_path):
    from vlprompt.engine.seeding import set_random_seed

    draws = []
    for critic in ("cosine", "learned"):
        cfg = setup_cfg(build_parser().parse_args(genpt_args(pets_root, tmp_path / critic, tiny_vit, *LEARNED,
                                                             "TRAINER.GENPT.MI_CRITIC", critic)))
        set_random_seed(cfg.SEED)
        trainer = build_trainer(cfg)
        assert (trainer.model.critics is None) == (critic == "cosine")
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])
    assert set(trainer.model.critics) == {"views", "visual"}
    assert all(p.requires_grad for p in trainer.model.critics.parameters())


def test_learned_critic_trains_is_saved_beside_the_context_and_resumes_exactly(pets_root, tiny_vit, tmp_path):
    def run(out):
        return main(genpt_args(pets_root, out, tiny_vit, *LEARNED, "TRAIN.CHECKPOINT_FREQ", "1", epochs=3))

    straight = run(tmp_path / "straight")
    folder = tmp_path / "straight" / "prompt_learner"
    saved = load_checkpoint(str(folder / "model.pth.tar-3"))
    assert list(saved["state_dict"]) == ["ctx", "token_prefix", "token_suffix"]  # CoOp's, as before
    critic = saved["genpt"]["critic"]
    assert {key.split(".")[0] for key in critic} == {"views", "visual"}
    assert critic["views.head_x.outer.weight"].abs().sum() > 0  # zero at the start: it trained
    torch.load(folder / "model.pth.tar-3", weights_only=True)

    # the same run stopped after epoch 1: it resumes from that checkpoint's context, critic and Adam state
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "straight", stopped)
    for epoch in (2, 3):
        (stopped / "prompt_learner" / f"model.pth.tar-{epoch}").unlink()
    (stopped / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    (stopped / "run.json").unlink()
    resumed = run(stopped)
    assert resumed.start_epoch == 1
    again = load_checkpoint(str(stopped / "prompt_learner" / "model.pth.tar-3"))
    assert torch.equal(saved["state_dict"]["ctx"], again["state_dict"]["ctx"])
    assert all(torch.equal(critic[key], again["genpt"]["critic"][key]) for key in critic)
    assert resumed.test_results == straight.test_results


def test_a_context_only_checkpoint_evaluates_under_a_learned_critic_config(pets_root, tiny_vit, tmp_path):
    out = tmp_path / "cosine"  # the checkpoint GenPT wrote before the learned critic existed: no critic entry
    trained = main(genpt_args(pets_root, out, tiny_vit, "TRAINER.GENPT.MI_CRITIC", "cosine",
                              "TRAINER.GENPT.LAMBDA_MI_VISUAL", "0.0", epochs=1))
    assert "critic" not in load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-1"))["genpt"]
    evaluated = main(genpt_args(pets_root, tmp_path / "eval", tiny_vit, *LEARNED, epochs=1,
                                flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1")))
    assert evaluated.test_results["accuracy"] == trained.test_results["accuracy"]
