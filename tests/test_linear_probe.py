"""LinearProbeCLIP: the reference's C search on fixed features, and the trainer through train.py."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import train_args

pytest.importorskip("sklearn")

from vlprompt.cli import main
from vlprompt.trainers.linear_probe import COARSE_SEARCH, LinearProbeCLIP, search_regularization

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20"]


def fixed_features():
    """4 overlapping Gaussian classes in 6-d: train 16, val 4, test 25 per class (float32, as lpclip's npz)."""
    rng = np.random.default_rng(7)
    n_cls, dim = 4, 6
    means = rng.normal(0, 1.0, size=(n_cls, dim))

    def draw(per_class):
        x = np.concatenate([means[c] + rng.normal(0, 1.1, size=(per_class, dim)) for c in range(n_cls)])
        return x.astype(np.float32), np.repeat(np.arange(n_cls), per_class)

    return draw(16), draw(4), draw(25)


def reference_sample(train, val, num_shot, seed):
    """lpclip's few-shot sampling: np.random.seed(seed), then per class num_shot train and min(shots, 4) val
    items drawn without replacement, classes in sorted order."""
    (train_x, train_y), (val_x, val_y) = train, val
    np.random.seed(seed)
    idx = [i for c in np.unique(train_y)
           for i in np.random.choice(np.where(train_y == c)[0], size=num_shot, replace=False)]
    val_shots = {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}[num_shot]
    vidx = [i for c in np.unique(train_y)
            for i in np.random.choice(np.where(val_y == c)[0], size=val_shots, replace=False)]
    return train_x[idx], train_y[idx], val_x[vidx], val_y[vidx]


# Computed by running CoOp's lpclip/linear_probe.py (ff61507; only its deprecated penalty="l2" argument
# dropped, l2 being sklearn's default) on fixed_features() with --num_step 8 --num_run 2: per (shots, seed)
# the coarse validation accuracies, then the C kept in each round and that round's test accuracy (%).
REFERENCE = {
    (2, 2): ([0.375, 0.375, 0.5, 0.5, 0.375, 0.375, 0.375],
             [1000.0] + [100.0] * 7, [58.0] + [61.0] * 7),
    (4, 1): ([0.625, 0.625, 0.5625, 0.6875, 0.625, 0.4375, 0.4375],
             [0.1, 0.1, 0.31622776601683794, 0.31622776601683794] + [0.23713737056616552] * 4,
             [79.0, 79.0, 78.0, 78.0, 80.0, 80.0, 80.0, 80.0]),
    (8, 2): ([0.625, 0.625, 0.625, 0.75, 0.6875, 0.625, 0.625],
             [0.1] + [1.0] * 6 + [0.9646616199111993], [78.0] + [73.0] * 7),
    (16, 1): ([0.875, 0.875, 0.875, 0.8125, 0.75, 0.75, 0.625], [100000.0] * 8, [69.0] * 8),
}


@pytest.mark.parametrize("shots,seed", sorted(REFERENCE))
def test_search_reproduces_the_reference_c_search_on_fixed_features(shots, seed):
    train, val, (test_x, test_y) = fixed_features()
    coarse, chosen, test_acc = REFERENCE[(shots, seed)]
    result = search_regularization(*reference_sample(train, val, shots, seed), num_step=8)
    assert result.coarse == coarse
    # The same values of C, to the last bits (a log-space midpoint may round differently per numpy build).
    assert [step.chosen for step in result.steps] == pytest.approx(chosen, rel=1e-12)
    accuracies = [100 * np.mean(step.classifier.predict(test_x) == test_y) for step in result.steps]
    assert accuracies == pytest.approx(test_acc, abs=1e-9)
    assert result.c == result.steps[-1].chosen and result.classifier is result.steps[-1].classifier


def test_reusing_fits_gives_the_straightforward_search_with_fewer_fits():
    train, val, (test_x, _) = fixed_features()
    sample = reference_sample(train, val, 4, 1)
    fast = search_regularization(*sample, num_step=8)
    plain = search_regularization(*sample, num_step=8, reuse_fits=False)
    assert plain.fits == len(COARSE_SEARCH) + 2 * 8  # every round fits both ends, as the reference
    assert fast.fits < plain.fits
    assert [(s.c_left, s.c_right, s.acc_left, s.acc_right, s.chosen) for s in fast.steps] == \
           [(s.c_left, s.c_right, s.acc_left, s.acc_right, s.chosen) for s in plain.steps]
    np.testing.assert_array_equal(fast.classifier.decision_function(test_x), plain.classifier.decision_function(test_x))


def test_no_rounds_keeps_the_coarse_peak_and_bad_settings_are_refused():
    train, val, _ = fixed_features()
    result = search_regularization(*reference_sample(train, val, 4, 1), num_step=0)
    assert result.c == 1.0 and result.steps == []  # coarse peak: index 3 of the grid (0.6875)
    with pytest.raises(ValueError, match="SEARCH_LIST is empty"):
        search_regularization(*reference_sample(train, val, 4, 1), search_list=[])
    with pytest.raises(ValueError, match="NUM_STEP is -1"):
        search_regularization(*reference_sample(train, val, 4, 1), num_step=-1)


def test_separable_features_are_learned_far_above_chance():
    rng = np.random.default_rng(0)
    means = rng.normal(0, 5.0, size=(5, 8))

    def draw(n):
        return (np.concatenate([m + rng.normal(0, 0.5, size=(n, 8)) for m in means]), np.repeat(np.arange(5), n))

    (tx, ty), (vx, vy), (sx, sy) = draw(2), draw(2), draw(40)
    result = search_regularization(tx, ty, vx, vy)
    assert np.mean(result.classifier.predict(sx) == sy) > 0.95  # chance is 0.2


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 2, 3], [1, 3]])
def test_head_predicts_exactly_what_sklearn_predicts(labels):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = np.array(labels)[np.arange(40) % len(labels)]
    classifier = LogisticRegression(max_iter=1000).fit(x, y)
    fake = SimpleNamespace(num_classes=4, head=torch.nn.Linear(5, 4, dtype=torch.float64))
    LinearProbeCLIP.set_head(fake, classifier)
    with torch.no_grad():
        logits = fake.head(torch.from_numpy(x))
    assert torch.equal(logits.argmax(1), torch.from_numpy(classifier.predict(x)))
    absent = sorted(set(range(4)) - set(labels))
    assert torch.isinf(fake.head.bias[absent]).all()  # a class with no training image is never predicted


def lp_args(root, out, backbone, *extra, shots="2", seed="1", flags=()):
    return train_args(root, out, "LinearProbeCLIP", "trainers/LinearProbeCLIP/rn50.yaml", "--seed", seed, *flags,
                      "MODEL.BACKBONE.NAME", backbone, "DATASET.NUM_SHOTS", shots, *FAST, *extra)


def test_linear_probe_trains_through_train_py_beats_chance_and_reloads(pets_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "lp"
    trainer = main(lp_args(pets_root, out, tiny_vit, "TRAINER.LINEAR_PROBE.NUM_STEP", "3"))
    printed = capsys.readouterr().out
    assert "Loading trainer: LinearProbeCLIP" in printed and "Finish training" in printed
    assert re.search(r"Coarse search: C \[1000000\.0, 10000\.0, 100\.0, 1\.0, 0\.01, 0\.0001, 1e-06\]", printed)
    assert len(re.findall(r"^Round \d: C ", printed, flags=re.MULTILINE)) == 3
    accuracy = trainer.test_results["accuracy"]
    assert accuracy > 20.0  # 5 classes: chance is 20%
    # The head is sklearn's classifier: its test accuracy is sklearn's on the same frozen features.
    test_x, test_y = trainer.extract(trainer.dm.dataset.test)
    assert accuracy == pytest.approx(100 * np.mean(trainer.search.classifier.predict(test_x) == test_y))
    record = json.loads((out / "run.json").read_text())
    assert (record["trainer"], record["protocol"], record["shots"]) == ("LinearProbeCLIP", "few_shot", 2)
    assert record["config"]["TRAINER"]["LINEAR_PROBE"]["NUM_STEP"] == 3
    assert (out / "linear_probe" / "model.pth.tar-1").is_file()

    evaluated = main(lp_args(pets_root, tmp_path / "eval", tiny_vit,
                             flags=("--eval-only", "--model-dir", str(out), "--load-epoch", "1")))
    assert evaluated.test_results["accuracy"] == accuracy


def test_linear_probe_config_keys_and_checks(pets_root, tiny_vit, tmp_path):
    from vlprompt.cli import build_parser, setup_cfg

    cfg = setup_cfg(build_parser().parse_args(lp_args(pets_root, tmp_path, tiny_vit)))
    assert list(cfg.TRAINER.LINEAR_PROBE.SEARCH_LIST) == list(COARSE_SEARCH)
    assert cfg.TRAINER.LINEAR_PROBE.MAX_ITER == 1000
    with pytest.raises(ValueError, match="NUM_STEP is -2"):
        main(lp_args(pets_root, tmp_path / "bad", tiny_vit, "TRAINER.LINEAR_PROBE.NUM_STEP", "-2"))
