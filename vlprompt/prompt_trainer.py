"""What every prompt-learning trainer shares: frozen CLIP, one trainable ``prompt_learner``, precision,
and CoOp-compatible checkpoint loading. A method adds only its model and its loss."""

from __future__ import annotations

import contextlib
import os.path as osp
import warnings
from collections import OrderedDict

import torch
from torch import nn

from vlprompt.clip_backbone import apply_precision, clip_input_resolution, load_clip, resolve_clip_weights
from vlprompt.compat import TrainerX
from vlprompt.engine.checkpoint import load_checkpoint
from vlprompt.engine.optim import build_lr_scheduler, build_optimizer
from vlprompt.errors import UserError, UserFileNotFoundError, UserValueError
from vlprompt.io import file_sha256

PRECISIONS = ("fp16", "fp32", "amp", "bf16")
# Buffers that CoOp-family checkpoints carry but that belong to the class set they were trained on:
# always recomputed from the current dataset's class names, never loaded.
CLASS_SET_BUFFERS = ("token_prefix", "token_suffix")
PROMPT_LEARNER = "prompt_learner"


class CheckpointMismatchError(UserError, ValueError):
    """A prompt checkpoint does not fit the model built from the current config."""


def clip_fingerprint_extras(cfg) -> dict:
    """What a CLIP-based run's config cannot say about its results: the SHA-256 of the weights file
    ``MODEL.BACKBONE.NAME`` resolves to (the same name can mean other weights elsewhere), and of
    ``MODEL.INIT_WEIGHTS`` when set. For ``fingerprint_extras``; hashes are cached per file."""
    extras = {"weights_sha256": file_sha256(resolve_clip_weights(cfg.MODEL.BACKBONE.NAME))}
    if cfg.MODEL.INIT_WEIGHTS and osp.isfile(cfg.MODEL.INIT_WEIGHTS):
        extras["init_weights_sha256"] = file_sha256(cfg.MODEL.INIT_WEIGHTS)
    return extras


def describe_mismatch(key: str, saved: tuple, expected: tuple, learner: nn.Module) -> str:
    """Which config value explains a shape difference of ``key`` (N_CTX, CSC, width, classes)."""
    if key.startswith("meta_net."):
        # CoCoOp's meta-net maps the image feature (CLIP's embedding size) to a context-width vector.
        return (f"{key}: checkpoint {saved} vs model {expected}; the image feature size or context width "
                "differs: a checkpoint of another CLIP backbone")
    if key != "ctx":
        return f"{key}: checkpoint {saved} vs model {expected}"
    csc = getattr(learner, "csc", False)
    reasons = []
    if len(saved) != len(expected):
        reasons.append(
            f"CSC differs (checkpoint {'class-specific' if len(saved) == 3 else 'shared'} context, "
            f"config CSC={csc})"
        )
    else:
        if saved[-2] != expected[-2]:
            reasons.append(f"N_CTX differs (checkpoint {saved[-2]}, config {expected[-2]})")
        if saved[-1] != expected[-1]:
            reasons.append(
                f"context width differs (checkpoint {saved[-1]}, model {expected[-1]}): another CLIP backbone"
            )
        if len(saved) == 3 and saved[0] != expected[0]:
            reasons.append(
                f"number of classes differs (checkpoint {saved[0]}, dataset {expected[0]}): a class-specific "
                "context cannot move to another class set"
            )
    return f"ctx: checkpoint shape {saved} vs model {expected}; " + "; ".join(reasons)


def load_prompt_state(module: nn.Module, state_dict: dict, source: str) -> None:
    """Load a CoOp-format prompt state into ``module``: class-set buffers dropped, shapes checked with a
    message naming the differing config value, missing trainable keys reported."""
    state = OrderedDict((k.removeprefix("module."), v) for k, v in state_dict.items())
    for key in CLASS_SET_BUFFERS:
        state.pop(key, None)
    own = module.state_dict()
    problems = [
        describe_mismatch(key, tuple(value.shape), tuple(own[key].shape), module)
        for key, value in state.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    trainable = {name for name, p in module.named_parameters()}
    missing = sorted(trainable - set(state))
    if missing:
        problems.append(f"missing keys {missing} (a checkpoint of another method?)")
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        problems.append(f"unexpected keys {unexpected} (a checkpoint of another method?)")
    if problems:
        raise CheckpointMismatchError(f'Checkpoint "{source}" does not fit this model: ' + " | ".join(problems))
    module.load_state_dict(state, strict=False)


class PromptLearningTrainer(TrainerX):
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

    def fingerprint_extras(self) -> dict:
        return clip_fingerprint_extras(self.cfg)

    def build_custom_clip(self, classnames: list[str], clip_model: nn.Module) -> nn.Module:
        """The method's model; it must have a ``prompt_learner`` attribute."""
        raise NotImplementedError

    def build_model(self) -> None:
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, device=self.device)
        resolution = clip_input_resolution(clip_model)
        if cfg.INPUT.SIZE[0] != resolution:
            raise UserValueError(
                f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the CLIP backbone's input resolution "
                f"{resolution}; set INPUT.SIZE ({resolution}, {resolution})"
            )
        clip_model, self.prec = apply_precision(clip_model, self.method_cfg.PREC, self.device)
        if self.prec == "amp" and self.device.type != "cuda":
            warnings.warn("PREC amp needs CUDA; training in fp32 on this device", stacklevel=2)
            self.prec = "fp32"

        print("Building custom CLIP")
        self.model = self.build_custom_clip(classnames, clip_model)
        print("Turning off gradients in both the image and the text encoder")
        for name, param in self.model.named_parameters():
            param.requires_grad_(PROMPT_LEARNER in name)
        trainable = sorted(name for name, p in self.model.named_parameters() if p.requires_grad)
        print(f"Parameters to be updated: {set(trainable)}")

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
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise UserFileNotFoundError(f'Model not found at "{model_path}"')
            checkpoint = load_checkpoint(model_path, map_location=self.device)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            load_prompt_state(self._models[name], checkpoint["state_dict"], model_path)

