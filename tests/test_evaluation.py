"""The Classification evaluator: Dassl's metrics and its printed result block, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

from vlprompt.engine.evaluation import (
    Classification,
    announce_skipped,
    build_evaluator,
    macro_f1_score,
    row_normalized_confusion_matrix,
)


def make_cfg(
    per_class: bool = False, cmat: bool = False, output_dir: str = "./output", evaluator="Classification"
):
    cfg = CfgNode()
    cfg.OUTPUT_DIR = output_dir
    cfg.VERBOSE = True
    cfg.TEST = CfgNode()
    cfg.TEST.EVALUATOR = evaluator
    cfg.TEST.PER_CLASS_RESULT = per_class
    cfg.TEST.COMPUTE_CMAT = cmat
    return cfg


def one_hot_logits(pred: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.randn(len(pred), num_classes) * 0.1
    logits[torch.arange(len(pred)), torch.tensor(pred)] = 5.0
    return logits


Y_TRUE = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 1, 0, 2, 2, 2, 1]
# Per class F1 = 2TP / (#pred + #true): 4/6, 4/7, 6/7.
EXPECTED_F1 = 100.0 * (4 / 6 + 4 / 7 + 6 / 7) / 3


def test_small_known_case_numbers_and_printed_block(capsys):
    evaluator = Classification(make_cfg())
    logits = one_hot_logits(Y_PRED, 3)
    labels = torch.tensor(Y_TRUE)
    evaluator.process(logits[:4], labels[:4])  # batches accumulate
    evaluator.process(logits[4:], labels[4:])
    results = evaluator.evaluate()
    assert isinstance(results, OrderedDict)
    assert list(results) == ["accuracy", "error_rate", "macro_f1"]
    assert results["accuracy"] == pytest.approx(70.0)
    assert results["error_rate"] == pytest.approx(30.0)
    assert results["macro_f1"] == pytest.approx(EXPECTED_F1)
    assert capsys.readouterr().out == (
        "=> result\n* total: 10\n* correct: 7\n* accuracy: 70.0%\n* error: 30.0%\n* macro_f1: 69.8%\n"
    )


def test_skipped_images_add_one_line_after_dassls_block_once(capsys):
    evaluator = Classification(make_cfg(per_class=True), lab2cname={0: "a", 1: "b", 2: "c"})
    logits, labels = one_hot_logits(Y_PRED, 3), torch.tensor(Y_TRUE)
    skipped = [2]
    announce_skipped(lambda: skipped[0])  # a loader's count, read when the block is printed
    skipped[0] = 3
    evaluator.process(logits, labels)
    results = evaluator.evaluate()
    assert results["skipped"] == 3 and list(results)[:3] == ["accuracy", "error_rate", "macro_f1"]
    printed = capsys.readouterr().out
    assert printed.startswith(
        "=> result\n* total: 10\n* correct: 7\n* accuracy: 70.0%\n* error: 30.0%\n* macro_f1: 69.8%\n"
        "* skipped: 3 unreadable image(s)\n=> per-class result\n"
    )
    evaluator.reset()
    evaluator.process(logits, labels)
    assert "skipped" not in evaluator.evaluate()  # the count belongs to one evaluation
    assert "skipped" not in capsys.readouterr().out


def test_thousands_separators_and_one_decimal(capsys):
    # The example block from a real OxfordPets log: 1,881 images, 1,795 correct.
    y_true = np.arange(1881) % 37
    y_pred = y_true.copy()
    y_pred[:86] = (y_pred[:86] + 1) % 37
    evaluator = Classification(make_cfg())
    evaluator.process(one_hot_logits(y_pred.tolist(), 37), torch.from_numpy(y_true))
    results = evaluator.evaluate()
    from sklearn.metrics import f1_score

    f1 = 100.0 * f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
    assert results["macro_f1"] == pytest.approx(f1, abs=1e-10)
    assert capsys.readouterr().out == (
        "=> result\n* total: 1,881\n* correct: 1,795\n* accuracy: 95.4%\n* error: 4.6%\n"
        f"* macro_f1: {f1:.1f}%\n"
    )


def test_per_class_block(capsys):
    lab2cname = {0: "abyssinian", 1: "beagle", 2: "bengal"}
    evaluator = Classification(make_cfg(per_class=True), lab2cname=lab2cname)
    # Labels arrive out of order; the block is sorted by label.
    order = [6, 0, 3, 1, 4, 7, 2, 5, 8, 9]
    evaluator.process(one_hot_logits([Y_PRED[i] for i in order], 3), torch.tensor([Y_TRUE[i] for i in order]))
    results = evaluator.evaluate()
    out = capsys.readouterr().out
    assert out.endswith(
        "=> per-class result\n"
        "* class: 0 (abyssinian)\ttotal: 3\tcorrect: 2\tacc: 66.7%\n"
        "* class: 1 (beagle)\ttotal: 3\tcorrect: 2\tacc: 66.7%\n"
        "* class: 2 (bengal)\ttotal: 4\tcorrect: 3\tacc: 75.0%\n"
        "* average: 69.4%\n"
    )
    assert out.startswith("=> result\n* total: 10\n")
    assert list(results) == ["accuracy", "error_rate", "macro_f1", "perclass_accuracy"]
    assert results["perclass_accuracy"] == pytest.approx(100.0 * (2 / 3 + 2 / 3 + 3 / 4) / 3)
    assert type(results["perclass_accuracy"]) is float


def test_per_class_counts_use_thousands_separators(capsys):
    evaluator = Classification(make_cfg(per_class=True), lab2cname={0: "a"})
    evaluator.process(one_hot_logits([0] * 1200, 2), torch.zeros(1200, dtype=torch.long))
    evaluator.evaluate()
    assert "* class: 0 (a)\ttotal: 1,200\tcorrect: 1,200\tacc: 100.0%\n" in capsys.readouterr().out


@pytest.mark.parametrize("seed", range(8))
def test_macro_f1_and_cmat_equal_sklearn_on_random_data(seed):
    from sklearn.metrics import confusion_matrix, f1_score

    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 12))
    y_true = rng.integers(0, num_classes, size=int(rng.integers(1, 300)))
    # Predictions include labels never present in y_true (they only cost recall).
    y_pred = np.where(
        rng.random(len(y_true)) < 0.5, y_true, rng.integers(0, num_classes + 3, size=len(y_true))
    )
    expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
    assert macro_f1_score(y_true, y_pred) == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(
        row_normalized_confusion_matrix(y_true, y_pred),
        confusion_matrix(y_true, y_pred, normalize="true"),
        atol=1e-12,
    )


def test_reset_clears_state(capsys):
    lab2cname = {0: "a", 1: "b", 2: "c"}
    evaluator = Classification(make_cfg(per_class=True), lab2cname=lab2cname)
    evaluator.process(one_hot_logits([1, 1, 1], 3), torch.tensor([0, 0, 0]))
    evaluator.reset()
    evaluator.process(one_hot_logits([2, 1], 3), torch.tensor([2, 1]))
    results = evaluator.evaluate()
    assert results["accuracy"] == 100.0 and results["macro_f1"] == 100.0
    out = capsys.readouterr().out
    assert "* total: 2\n" in out and "class: 0" not in out
    evaluator.reset()
    with pytest.raises(RuntimeError, match="before any batch was processed"):
        evaluator.evaluate()


def test_confusion_matrix_file(tmp_path, capsys):
    out_dir = tmp_path / "run"
    evaluator = Classification(make_cfg(cmat=True, output_dir=str(out_dir)))
    evaluator.process(one_hot_logits(Y_PRED, 3), torch.tensor(Y_TRUE))
    evaluator.evaluate()
    path = out_dir / "cmat.pt"
    assert f"Confusion matrix is saved to {path}\n" in capsys.readouterr().out
    cmat = torch.load(path, weights_only=True)
    expected = torch.tensor(
        [[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.0], [0.0, 1 / 4, 3 / 4]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(cmat, expected)
    torch.testing.assert_close(cmat.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_no_cmat_file_unless_asked(tmp_path):
    evaluator = Classification(make_cfg(output_dir=str(tmp_path)))
    evaluator.process(one_hot_logits([0], 2), torch.tensor([0]))
    evaluator.evaluate()
    assert not (tmp_path / "cmat.pt").exists()


def test_build_evaluator(capsys):
    evaluator = build_evaluator(make_cfg(per_class=True), lab2cname={0: "a"})
    assert isinstance(evaluator, Classification)
    assert capsys.readouterr().out == "Loading evaluator: Classification\n"
    quiet = make_cfg()
    quiet.VERBOSE = False
    build_evaluator(quiet)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match=r'TEST.EVALUATOR: "Classifcation".*Did you mean "Classification"'):
        build_evaluator(make_cfg(evaluator="Classifcation"))


def test_per_class_needs_lab2cname():
    with pytest.raises(ValueError, match="TEST.PER_CLASS_RESULT.*lab2cname"):
        Classification(make_cfg(per_class=True))


def test_import_does_not_load_sklearn():
    code = "import sys, vlprompt.engine.evaluation; assert 'sklearn' not in sys.modules, 'sklearn imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
