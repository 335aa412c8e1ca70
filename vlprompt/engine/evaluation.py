"""Dassl 0.6.3's ``Classification`` evaluator: accuracy, error, macro-F1, per-class accuracy, confusion matrix.

The printed result block matches Dassl's wording and format byte for byte, because ``parse_test_res.py``
and other downstream scripts read it from ``log.txt``. Metrics are computed with numpy (same definitions
as scikit-learn's ``f1_score``/``confusion_matrix``) so importing the engine does not import sklearn.
"""

from __future__ import annotations

import logging
import os
import os.path as osp
from collections import OrderedDict, defaultdict
from typing import Any, Callable

import numpy as np
import torch

from vlprompt.engine.registry import Registry
from vlprompt.errors import UserValueError

log = logging.getLogger(__name__)

EVALUATOR_REGISTRY = Registry("EVALUATOR")

# How many images of the split being evaluated were skipped as unreadable, for the next result block.
_pending_skipped: int | Callable[[], int] | None = None


def announce_skipped(count: int | Callable[[], int] | None) -> None:
    """Tell the next result block how many images of the evaluated split were skipped as unreadable
    (``DATALOADER.SKIP_CORRUPT_IMAGES``): a number, or a callable asked when the block is printed (a
    loader knows its skips only after its pass). The block prints it as one extra line, then forgets it;
    None forgets it now (a new run's data manager does, so nothing carries over from an earlier run)."""
    global _pending_skipped
    _pending_skipped = count


def _take_skipped() -> int | None:
    global _pending_skipped
    count, _pending_skipped = _pending_skipped, None
    return count() if callable(count) else count


def macro_f1_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean F1 over the labels present in ``y_true`` (sklearn ``average="macro"``,
    ``labels=np.unique(y_true)``); a fraction in [0, 1]."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels, true_index = np.unique(y_true, return_inverse=True)
    num_labels = len(labels)
    support = np.bincount(true_index, minlength=num_labels)
    true_positives = np.bincount(true_index[y_true == y_pred], minlength=num_labels)
    # Predictions of labels absent from y_true are false negatives of the true label only.
    pred_index = np.searchsorted(labels, y_pred)
    pred_index_clipped = np.minimum(pred_index, num_labels - 1)
    known = labels[pred_index_clipped] == y_pred
    predicted = np.bincount(pred_index_clipped[known], minlength=num_labels)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #true); #true > 0 for every listed label.
    f1 = 2.0 * true_positives / (predicted + support)
    return float(f1.mean())


def row_normalized_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """sklearn's ``confusion_matrix(y_true, y_pred, normalize="true")``: rows and columns are the sorted
    labels seen in either array, each row divided by its total (all-zero rows stay zero)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    counts = np.zeros((len(labels), len(labels)), dtype=np.float64)
    np.add.at(counts, (np.searchsorted(labels, y_true), np.searchsorted(labels, y_pred)), 1.0)
    row_sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)


class EvaluatorBase:
    """Interface of an evaluator: ``reset()``, ``process(output, target)`` per batch, ``evaluate()``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        raise NotImplementedError

    def evaluate(self) -> OrderedDict:
        raise NotImplementedError


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accumulates argmax predictions; ``evaluate()`` prints Dassl's result block and returns the metrics.

    The first returned metric (``accuracy``, in percent) is what ``trainer.test()`` returns.
    """

    def __init__(self, cfg: Any, lab2cname: dict[int, str] | None = None, **kwargs: Any) -> None:
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._per_class_res: defaultdict[int, list[int]] | None = None
        if cfg.TEST.PER_CLASS_RESULT:
            if lab2cname is None:
                raise ValueError(
                    "TEST.PER_CLASS_RESULT is True but no lab2cname (label -> class name) was given to "
                    "the Classification evaluator; pass lab2cname or set TEST.PER_CLASS_RESULT False"
                )
            self._per_class_res = defaultdict(list)
        self.reset()

    def reset(self) -> None:
        """Forget everything processed so far (called before each test)."""
        self._correct = 0
        self._total = 0
        self._y_true: list[int] = []
        self._y_pred: list[int] = []
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def process(self, mo: torch.Tensor, gt: torch.Tensor) -> None:
        """Add one batch: ``mo`` are scores ``[batch, num_classes]``, ``gt`` the labels ``[batch]``."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt).int()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        labels = gt.detach().cpu().tolist()
        self._y_true.extend(labels)
        self._y_pred.extend(pred.detach().cpu().tolist())
        if self._per_class_res is not None:
            for label, match in zip(labels, matches.cpu().tolist()):
                self._per_class_res[label].append(match)

    def evaluate(self) -> OrderedDict:
        """Print the result block (and per-class block, confusion matrix) and return the metrics in percent
        (plus ``skipped``, a count, when images were skipped as unreadable)."""
        if self._total == 0:
            raise RuntimeError(
                "Classification.evaluate() was called before any batch was processed; the evaluated "
                "split is empty or process() was never called"
            )
        results: OrderedDict[str, float] = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(np.asarray(self._y_true), np.asarray(self._y_pred))
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1
        log.info(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )
        skipped = _take_skipped()
        if skipped is not None:  # only with DATALOADER.SKIP_CORRUPT_IMAGES: Dassl's lines stay as they are
            results["skipped"] = skipped
            log.info(f"* skipped: {skipped:,} unreadable image(s)")

        if self._per_class_res is not None:
            log.info("=> per-class result")
            class_accs = []
            for label in sorted(self._per_class_res):
                res = self._per_class_res[label]
                correct = sum(res)
                total = len(res)
                class_acc = 100.0 * correct / total
                class_accs.append(class_acc)
                log.info(
                    f"* class: {label} ({self._lab2cname[label]})\t"
                    f"total: {total:,}\t"
                    f"correct: {correct:,}\t"
                    f"acc: {class_acc:.1f}%"
                )
            mean_acc = float(np.mean(class_accs))
            log.info(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT:
            cmat = row_normalized_confusion_matrix(np.asarray(self._y_true), np.asarray(self._y_pred))
            os.makedirs(self.cfg.OUTPUT_DIR, exist_ok=True)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            # A tensor rather than Dassl's numpy array: it loads with torch.load's default
            # weights_only=True (torch >= 2.6); .numpy() gives Dassl's array back.
            torch.save(torch.from_numpy(cmat), save_path)
            log.info(f"Confusion matrix is saved to {save_path}")

        return results


def build_evaluator(cfg: Any, **kwargs: Any) -> EvaluatorBase:
    """Build the evaluator named by ``cfg.TEST.EVALUATOR``; kwargs (e.g. ``lab2cname``) go to it."""
    name = cfg.TEST.EVALUATOR
    if name not in EVALUATOR_REGISTRY:
        raise UserValueError(f"TEST.EVALUATOR: {EVALUATOR_REGISTRY.unknown_message(name)}")
    if cfg.get("VERBOSE", True):
        log.info(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
