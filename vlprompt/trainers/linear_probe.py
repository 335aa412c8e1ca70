"""Linear-probe CLIP (the CoOp paper's baseline): logistic regression on frozen CLIP image features.

As CoOp's ``lpclip``: features of the un-augmented images (the test transform for every split), raw
(not L2-normalised); sklearn's L2 logistic regression (lbfgs, ``MAX_ITER`` 1000); the inverse
regularisation strength C picked on the validation split by a coarse search over
``SEARCH_LIST`` = {1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6} followed by ``NUM_STEP`` rounds of the reference's
log-space bisection. Unlike ``lpclip`` it runs through ``train.py`` like every other method, on the
same few-shot split (``DATASET.NUM_SHOTS``, seeded by ``SEED``; validation ``min(shots, 4)`` per class)
the prompt learners see, and it prints Dassl's result block and writes ``run.json``.
"""

from __future__ import annotations

import datetime
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode as CN

from vlprompt.compat import TRAINER_REGISTRY, build_data_loader, build_transform
from vlprompt.engine.config import register_cfg_extension
from vlprompt.errors import UserValueError
from vlprompt.prompt_trainer import ClipTrainer

log = logging.getLogger(__name__)

COARSE_SEARCH = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
HEAD = "linear_probe"


@register_cfg_extension
def add_linear_probe_keys(cfg) -> None:
    """``TRAINER.LINEAR_PROBE.*`` with the reference's search settings."""
    cfg.TRAINER.LINEAR_PROBE = CN()
    cfg.TRAINER.LINEAR_PROBE.SEARCH_LIST = list(COARSE_SEARCH)  # coarse values of C, tried in this order
    cfg.TRAINER.LINEAR_PROBE.NUM_STEP = 8  # bisection rounds after the coarse search (lpclip's --num_step)
    cfg.TRAINER.LINEAR_PROBE.MAX_ITER = 1000  # lbfgs iterations per fit


@dataclass
class SearchStep:
    """One bisection round: the two values of C tried, their validation accuracies, the one kept."""

    c_left: float
    c_right: float
    acc_left: float
    acc_right: float
    chosen: float
    classifier: Any = field(repr=False)


@dataclass
class SearchResult:
    """The selected C, its fitted classifier, the coarse accuracies and every round."""

    c: float
    classifier: Any = field(repr=False)
    coarse: list[float]
    steps: list[SearchStep]
    val_accuracy: float
    fits: int


def _accuracy(classifier, features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.sum(classifier.predict(features) == labels) / len(labels))


def search_regularization(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *,
                          search_list: Sequence[float] = COARSE_SEARCH, num_step: int = 8, max_iter: int = 1000,
                          reuse_fits: bool = True) -> SearchResult:
    """The reference's C search, with the same arithmetic (so the same C values to the last bit).

    Coarse: fit every C of ``search_list``, take the first with the best validation accuracy, c_peak.
    Then start from (c_peak/10, 10·c_peak); each round fits both ends and keeps the better one (the left,
    smaller C, on a tie); the next range runs from the midpoint, in log10, of the two ends to the kept
    end. The classifier of the last round is the result (with ``num_step`` 0, the coarse peak's).

    lbfgs is deterministic, so with ``reuse_fits`` a C tried before (the kept end usually comes back
    bit-identical) is not fitted again; results are identical either way.
    """
    from sklearn.linear_model import LogisticRegression

    if not search_list:
        raise UserValueError("TRAINER.LINEAR_PROBE.SEARCH_LIST is empty; give at least one value of C")
    if num_step < 0:
        raise UserValueError(f"TRAINER.LINEAR_PROBE.NUM_STEP is {num_step}; use 0 or more rounds")
    fitted: dict[float, Any] = {}
    fits = 0

    def fit(c: float):
        nonlocal fits
        c = float(c)
        if reuse_fits and c in fitted:
            return fitted[c]
        fits += 1
        # L2 is sklearn's default penalty (passing penalty="l2" is deprecated since sklearn 1.8).
        classifier = LogisticRegression(solver="lbfgs", max_iter=max_iter, C=c).fit(train_x, train_y)
        if reuse_fits:
            fitted[c] = classifier
        return classifier

    coarse_fits = [fit(c) for c in search_list]
    coarse = [_accuracy(classifier, val_x, val_y) for classifier in coarse_fits]
    peak = int(np.argmax(coarse))
    c_peak = search_list[peak]
    result = SearchResult(float(c_peak), coarse_fits[peak], coarse, [], coarse[peak], fits)
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(num_step):
        left, right = fit(c_left), fit(c_right)
        acc_left, acc_right = _accuracy(left, val_x, val_y), _accuracy(right, val_x, val_y)
        if acc_left < acc_right:
            chosen, classifier, acc = c_right, right, acc_right
            log_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            log_right = np.log10(c_right)
        else:
            chosen, classifier, acc = c_left, left, acc_left
            log_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            log_left = np.log10(c_left)
        result.steps.append(SearchStep(float(c_left), float(c_right), acc_left, acc_right, float(chosen),
                                       classifier))
        result.c, result.classifier, result.val_accuracy = float(chosen), classifier, acc
        c_left, c_right = np.power(10, log_left), np.power(10, log_right)
    result.fits = fits
    return result


@TRAINER_REGISTRY.register()
class LinearProbeCLIP(ClipTrainer):
    """Frozen CLIP image encoder + a logistic-regression head; "training" fits the head once."""

    CONFIG_SECTION = "LINEAR_PROBE"  # its keys (vlprompt.engine.fingerprint.method_section)

    def check_cfg(self, cfg) -> None:
        lp = cfg.TRAINER.LINEAR_PROBE
        if not lp.SEARCH_LIST or any(float(c) <= 0 for c in lp.SEARCH_LIST):
            raise UserValueError(f"TRAINER.LINEAR_PROBE.SEARCH_LIST is {list(lp.SEARCH_LIST)}; give positive values of C")
        if lp.NUM_STEP < 0:
            raise UserValueError(f"TRAINER.LINEAR_PROBE.NUM_STEP is {lp.NUM_STEP}; use 0 or more rounds")

    def build_model(self) -> None:
        # As zero-shot CLIP: the released fp16 weights on a GPU, fp32 on a CPU (fp16 there is slow).
        clip = self.build_clip(self.inference_precision())
        self.clip_model = clip.model
        dim = clip.adapter.image_output_dim
        # float64 as sklearn computes, so the head's predictions are sklearn's to the last bit.
        self.head = nn.Linear(dim, self.num_classes, dtype=torch.float64, device=self.device)
        self.head.requires_grad_(False)
        self.register_model(HEAD, self.head)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) CLIP image features, float32."""
        adapter = self.clip.adapter
        return adapter.encode_image(images.to(self.device, adapter.dtype)).float()

    @torch.no_grad()
    def extract(self, data_source: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of ``data_source`` through the test transform (no augmentation); loaders
        come from the selected engine (built-in or Dassl)."""
        if getattr(self, "_tfm_test", None) is None:  # Dassl's data manager keeps no transforms
            self._tfm_test = getattr(self.dm, "tfm_test", None) or build_transform(self.cfg, is_train=False)
        loader = build_data_loader(
            self.cfg, sampler_type="SequentialSampler", data_source=data_source,
            batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE, tfm=self._tfm_test, is_train=False,
        )
        features, labels = [], []
        for batch in loader:
            features.append(self.image_features(batch["img"]).cpu().numpy())
            labels.append(batch["label"].numpy())
        return np.concatenate(features), np.concatenate(labels)

    @torch.no_grad()
    def set_head(self, classifier) -> None:
        """Copy a fitted sklearn classifier into the head: one row per class label; a label absent from
        the training data gets a bias of -inf (never predicted)."""
        coef = np.asarray(classifier.coef_, dtype=np.float64)
        intercept = np.asarray(classifier.intercept_, dtype=np.float64)
        classes = np.asarray(classifier.classes_)
        if coef.shape[0] == 1:  # two classes: sklearn keeps one row, positive means classes_[1]
            coef = np.concatenate([np.zeros_like(coef), coef])
            intercept = np.concatenate([np.zeros_like(intercept), intercept])
        weight = np.zeros((self.num_classes, coef.shape[1]))
        bias = np.full(self.num_classes, -np.inf)
        weight[classes] = coef
        bias[classes] = intercept
        self.head.weight.copy_(torch.from_numpy(weight))
        self.head.bias.copy_(torch.from_numpy(bias))

    def train(self) -> None:
        """Extract features, search C on the validation split, fit, save the head, then test."""
        cfg = self.cfg
        lp = cfg.TRAINER.LINEAR_PROBE
        start = time.time()
        dataset = self.dm.dataset
        if not dataset.val:
            raise UserValueError(
                f"LinearProbeCLIP picks C on the validation split, and {cfg.DATASET.NAME} has none here; "
                "use a dataset/split with a val set"
            )
        log.info("Extracting frozen image features (test transform) for train and val")
        train_x, train_y = self.extract(dataset.train_x)
        val_x, val_y = self.extract(dataset.val)
        from sklearn.exceptions import ConvergenceWarning

        # Large C often stops lbfgs at MAX_ITER (as in the reference): counted into one line, not dozens.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            result = search_regularization(
                train_x, train_y, val_x, val_y, search_list=[float(c) for c in lp.SEARCH_LIST],
                num_step=lp.NUM_STEP, max_iter=lp.MAX_ITER,
            )
        not_converged = 0
        for caught_warning in caught:
            if issubclass(caught_warning.category, ConvergenceWarning):
                not_converged += 1
            else:
                warnings.warn_explicit(caught_warning.message, caught_warning.category, caught_warning.filename,
                                       caught_warning.lineno)
        log.info(f"Coarse search: C {[float(c) for c in lp.SEARCH_LIST]} -> val acc "
                 f"{[round(100 * a, 2) for a in result.coarse]}")
        for i, step in enumerate(result.steps):
            log.info(f"Round {i}: C {step.c_left:.6g}/{step.c_right:.6g} val acc {100 * step.acc_left:.2f}/"
                     f"{100 * step.acc_right:.2f} -> C {step.chosen:.6g}")
        if not_converged:
            log.info(f"Note: lbfgs reached MAX_ITER {lp.MAX_ITER} without converging in {not_converged} fit(s)")
        log.info(f"Selected C = {result.c:.6g} (val accuracy {100 * result.val_accuracy:.2f}%, {result.fits} fits)")
        self.set_head(result.classifier)
        self.search = result
        self.save_model(0, self.output_dir, val_result=100 * result.val_accuracy)
        log.info("Finish training")
        if not cfg.TEST.NO_TEST:
            self.test()
        log.info(f"Elapsed: {datetime.timedelta(seconds=round(time.time() - start))}")

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(images).double())
