"""What every CLIP trainer shares, so a method file holds only its model and its loss or update.

(Outside the ``trainers`` package so that the test-time harness in :mod:`vlprompt.tta` can build on it
without importing the trainers.)

:class:`ClipTrainer` builds CLIP once through :func:`vlprompt.modeling.create_clip` (weights, precision,
the ``INPUT.SIZE`` check) and fingerprints the weights; data comes from the engine selected in
:mod:`vlprompt.compat` (the built-in one or Dassl). :class:`PromptLearningTrainer` adds the frozen-CLIP,
one-trainable-``prompt_learner`` life cycle with CoOp-compatible checkpoints. Trainers import this module,
the modeling wing and the engine, never each other.
"""

from __future__ import annotations

import contextlib
import logging
import os.path as osp
import warnings

import torch
from torch import nn

from vlprompt.compat import TrainerX
from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.engine.optim import build_lr_scheduler, build_optimizer
from vlprompt.errors import UserFileNotFoundError, UserValueError
from vlprompt.modeling import (
    PRECISIONS,
    ClipBundle,
    check_input_size,
    create_clip,
    weights_fingerprint_extras,
)
from vlprompt.modeling.prompt_checkpoints import (  # noqa: F401 - also known by these names here
    CLASS_SET_BUFFERS,
    PROMPT_LEARNER,
    CheckpointMismatchError,
    describe_mismatch,
    load_prompt_state,
)

log = logging.getLogger(__name__)

clip_fingerprint_extras = weights_fingerprint_extras  # the name trainers used before the modeling wing


class ClipTrainer(TrainerX):
    """Base of every CLIP-based trainer: :meth:`build_clip` loads the backbone once, checked against the config."""

    def fingerprint_extras(self) -> dict:
        return weights_fingerprint_extras(self.cfg)

    def inference_precision(self) -> str:
        """CLIP's released weights are fp16, as the reference runs them; on a CPU that is slow, so fp32 there."""
        return "fp16" if self.device.type == "cuda" else "fp32"

    def build_clip(self, precision: str, *, cached: bool = False) -> ClipBundle:
        """Load ``MODEL.BACKBONE`` in ``precision`` (frozen), check ``INPUT.SIZE`` against its preprocessing;
        ``cached`` reuses (a copy of) a model loaded earlier in this process."""
        cfg = self.cfg
        log.info(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        bundle = create_clip(cfg, self.device, precision, cached=cached)
        check_input_size(cfg, bundle.preprocess)
        self.clip = bundle
        return bundle


class PromptLearningTrainer(ClipTrainer):
    """Base for CoOp-style trainers: subclasses set ``cfg_node`` and implement ``build_custom_clip``.

    The model registered as ``prompt_learner`` is the only trained part; its checkpoints are
    CoOp's (``prompt_learner/model.pth.tar-N``).
    """

    cfg_node: str = ""  # e.g. "COOP": where PREC, N_CTX, ... live under cfg.TRAINER

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.cfg_node]

    def check_cfg(self, cfg) -> None:
        prec = cfg.TRAINER[self.cfg_node].PREC
        if prec not in PRECISIONS:
            raise UserValueError(f'TRAINER.{self.cfg_node}.PREC "{prec}" is not one of {", ".join(PRECISIONS)}')

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        """The method's model; it must have a ``prompt_learner`` attribute."""
        raise NotImplementedError

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        bundle = self.build_clip(self.method_cfg.PREC)
        clip_model, self.prec = bundle.model, bundle.precision
        if self.prec == "amp" and self.device.type != "cuda":
            warnings.warn("PREC amp needs CUDA; training in fp32 on this device", stacklevel=2)
            self.prec = "fp32"

        log.info("Building custom CLIP")
        self.model = self.build_custom_clip(classnames, clip_model)
        log.info("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            param.requires_grad_(PROMPT_LEARNER in name)
        trainable = sorted(name for name, p in self.model.named_parameters() if p.requires_grad)
        log.info(f"Parameters to be updated: {set(trainable)}")

        if cfg.MODEL.INIT_WEIGHTS:
            checkpoint = load_checkpoint(cfg.MODEL.INIT_WEIGHTS)
            load_prompt_state(self.model.prompt_learner, checkpoint["state_dict"], cfg.MODEL.INIT_WEIGHTS)

        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(PROMPT_LEARNER, self.model.prompt_learner, self.optim, self.sched)
        self.scaler = torch.amp.GradScaler("cuda") if self.prec == "amp" else None

    def autocast(self):
        """Mixed-precision context for PREC amp on CUDA; a no-op otherwise."""
        if self.prec == "amp":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def backward_and_update(self, loss: torch.Tensor) -> None:
        """One optimiser step, through the gradient scaler under amp; a non-finite loss stops the run."""
        if self.scaler is None:
            self.model_backward_and_update(loss)
            return
        self.detect_anomaly(loss)
        self.optim.zero_grad()
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optim)
        self.scaler.update()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory: str, epoch: int | None = None) -> None:
        """CoOp's eval-time loading: ``<directory>/prompt_learner/model.pth.tar-<epoch>`` (or model-best),
        with the class-set buffers dropped so the prompts are rebuilt for the current classes."""
        if not directory:
            log.info("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise UserFileNotFoundError(f'Model not found at "{model_path}"')
            checkpoint = load_checkpoint(model_path, map_location=self.device)
            log.info(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            load_prompt_state(self._models[name], checkpoint["state_dict"], model_path)
