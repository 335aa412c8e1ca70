"""Optimiser and learning-rate scheduler builders with Dassl 0.6.3's names, keys and per-epoch LR sequence.

Dassl's own warm-up scheduler no longer runs on current PyTorch (it passes ``verbose`` to
``LRScheduler.__init__``) and its ``state_dict`` pickles the wrapped scheduler object, which
``torch.load(weights_only=True)`` refuses. The classes here keep Dassl's arithmetic exactly (the wrapped
schedulers are PyTorch's own, stepped the same way) and keep their state to plain values.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as torch_lr_scheduler
from torch.optim.lr_scheduler import CosineAnnealingLR, MultiStepLR, StepLR

from vlprompt.engine.config import DASSL_DEFAULTS
from vlprompt.errors import UserValueError

# The public name exists from torch 2.0; torch 1.13 only has the underscored base class.
LRScheduler = getattr(torch_lr_scheduler, "LRScheduler", torch_lr_scheduler._LRScheduler)

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]
AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]
AVAI_WARMUPS = ["constant", "linear"]

# Dassl 0.6.3's OPTIM defaults (the config's own), used only for keys a (partial) config node does not have.
OPTIM_DEFAULTS: dict[str, Any] = DASSL_DEFAULTS["OPTIM"]


def _opt(optim_cfg: Any, key: str) -> Any:
    """``optim_cfg.<key>``, falling back to Dassl's default so partial config nodes work."""
    if isinstance(optim_cfg, dict):
        return optim_cfg.get(key, OPTIM_DEFAULTS[key])
    return getattr(optim_cfg, key, OPTIM_DEFAULTS[key])


def _unwrap_parallel(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _staged_param_groups(model: Any, new_layers: Any, lr: float, base_lr_mult: float) -> list[dict]:
    """Two groups as Dassl's STAGED_LR: children not named in NEW_LAYERS train at ``lr * BASE_LR_MULT``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            "OPTIM.STAGED_LR is True, so build_optimizer() needs an nn.Module (to find the layers named "
            f"in OPTIM.NEW_LAYERS), but got {type(model).__name__}; pass the module or set STAGED_LR False"
        )
    model = _unwrap_parallel(model)
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    new_layers = list(new_layers or [])
    if not new_layers:
        warnings.warn("OPTIM.NEW_LAYERS is empty, so OPTIM.STAGED_LR has no effect", stacklevel=3)
    child_names = [name for name, _ in model.named_children()]
    missing = [name for name in new_layers if name not in child_names]
    if missing:
        # Dassl silently trains an unknown name at the base rate; a typo deserves a word.
        warnings.warn(
            f"OPTIM.NEW_LAYERS names {missing} that are not direct children of the model "
            f"(children: {child_names}); they are ignored",
            stacklevel=3,
        )
    base_params: list[nn.Parameter] = []
    new_params: list[nn.Parameter] = []
    for name, module in model.named_children():
        (new_params if name in new_layers else base_params).extend(module.parameters())
    return [{"params": base_params, "lr": lr * base_lr_mult}, {"params": new_params}]


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    optim_cfg: Any,
    param_groups: Iterable[Any] | None = None,
) -> torch.optim.Optimizer:
    """Build ``OPTIM.NAME`` (adam, amsgrad, sgd, rmsprop, radam, adamw) as Dassl does.

    ``model_or_params`` is an ``nn.Module``, an iterable of parameters or of param-group dicts;
    ``param_groups``, when given, is optimised instead (and STAGED_LR is ignored, as in Dassl).
    """
    name = _opt(optim_cfg, "NAME")
    lr = _opt(optim_cfg, "LR")
    weight_decay = _opt(optim_cfg, "WEIGHT_DECAY")
    momentum = _opt(optim_cfg, "MOMENTUM")
    betas = (_opt(optim_cfg, "ADAM_BETA1"), _opt(optim_cfg, "ADAM_BETA2"))
    staged_lr = _opt(optim_cfg, "STAGED_LR")

    if name not in AVAI_OPTIMS:
        raise UserValueError(f"OPTIM.NAME must be one of {AVAI_OPTIMS}, but got {name!r}")

    if param_groups is not None and staged_lr:
        warnings.warn(
            "OPTIM.STAGED_LR is ignored because param_groups were given; set each group's lr yourself",
            stacklevel=2,
        )
    if param_groups is None:
        if staged_lr:
            param_groups = _staged_param_groups(
                model_or_params, _opt(optim_cfg, "NEW_LAYERS"), lr, _opt(optim_cfg, "BASE_LR_MULT")
            )
        elif isinstance(model_or_params, nn.Module):
            param_groups = model_or_params.parameters()
        else:
            param_groups = model_or_params
    # Materialise generators so an empty parameter list fails here with torch's clear message.
    param_groups = list(param_groups)

    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)
    if name == "amsgrad":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay, betas=betas, amsgrad=True)
    if name == "sgd":
        return torch.optim.SGD(
            param_groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            dampening=_opt(optim_cfg, "SGD_DAMPNING"),
            nesterov=_opt(optim_cfg, "SGD_NESTEROV"),
        )
    if name == "rmsprop":
        return torch.optim.RMSprop(
            param_groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            alpha=_opt(optim_cfg, "RMSPROP_ALPHA"),
        )
    if name == "radam":
        # Dassl's bundled RAdam (Liu et al., degenerating to SGD with momentum while the variance is
        # intractable) shrinks weights by lr * weight_decay before each update: that is torch's RAdam
        # with decoupled weight decay.
        if "decoupled_weight_decay" not in inspect.signature(torch.optim.RAdam).parameters:
            raise RuntimeError(
                f"OPTIM.NAME 'radam' needs torch >= 2.1 (RAdam with decoupled weight decay, as Dassl's); "
                f"this is torch {torch.__version__}: upgrade torch or pick another OPTIM.NAME"
            )
        return torch.optim.RAdam(
            param_groups, lr=lr, weight_decay=weight_decay, betas=betas, decoupled_weight_decay=True
        )
    return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay, betas=betas)


class _BaseWarmupScheduler(LRScheduler):
    """Runs its own LR for ``warmup_epoch`` steps, then hands every step to ``successor`` (Dassl's scheme).

    The successor is built first, so its initial LR (the base LR) is what the optimiser gets back once
    warm-up ends; with ``WARMUP_RECOUNT=False`` its epoch counter starts at ``warmup_epoch`` instead of 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int) -> None:
        self.successor = successor
        self.warmup_epoch = int(warmup_epoch)
        super().__init__(optimizer, -1)

    def _warmup_lr(self) -> list[float]:
        raise NotImplementedError

    def get_lr(self) -> list[Any]:
        if self.last_epoch >= self.warmup_epoch:
            return list(self.successor.get_last_lr())
        return self._warmup_lr()

    def step(self, epoch: None = None) -> None:
        """Advance one epoch: the warm-up's own counter until it is done, the successor's afterwards."""
        if epoch is not None:
            raise TypeError(
                f"{type(self).__name__}.step() takes no epoch (the LR sequence is defined per call); "
                "restore a position with load_state_dict() instead"
            )
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = list(self.successor.get_last_lr())
        else:
            super().step()

    def state_dict(self) -> dict[str, Any]:
        """Plain values only: the successor's state is nested as its own ``state_dict()``."""
        state = {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this scheduler and its successor; also accepts Dassl's pickled-successor format."""
        state = dict(state_dict)
        successor_state = state.pop("successor", None)
        if successor_state is not None and not isinstance(successor_state, dict):
            # A checkpoint written by real Dassl holds the successor object itself.
            successor_state = successor_state.state_dict()
        state.pop("optimizer", None)
        self.__dict__.update(state)
        if successor_state is not None:
            self.successor.load_state_dict(successor_state)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """Dassl's ``ConstantWarmupScheduler``: ``cons_lr`` for the first ``warmup_epoch`` epochs."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int, cons_lr: float
    ) -> None:
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def _warmup_lr(self) -> list[float]:
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """Dassl's ``LinearWarmupScheduler``: ``min_lr`` in epoch 1, then ``base_lr * (e - 1) / warmup_epoch``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int, min_lr: float
    ) -> None:
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch)

    def _warmup_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [base_lr * self.last_epoch / self.warmup_epoch for base_lr in self.base_lrs]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any) -> LRScheduler:
    """Build ``OPTIM.LR_SCHEDULER`` (single_step, multi_step, cosine), warm-up wrapped when WARMUP_EPOCH > 0.

    Step it once per epoch, after the epoch: the LR of epoch e (1-based) is the one set after e - 1 steps.
    """
    sched_name = _opt(optim_cfg, "LR_SCHEDULER")
    stepsize = _opt(optim_cfg, "STEPSIZE")
    gamma = _opt(optim_cfg, "GAMMA")
    max_epoch = _opt(optim_cfg, "MAX_EPOCH")

    if sched_name not in AVAI_SCHEDS:
        raise UserValueError(f"OPTIM.LR_SCHEDULER must be one of {AVAI_SCHEDS}, but got {sched_name!r}")

    scheduler: LRScheduler
    if sched_name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if isinstance(stepsize, bool) or not isinstance(stepsize, int):
            raise TypeError(
                f"OPTIM.STEPSIZE must be an integer for single_step (or a list whose last item is one), "
                f"but got {stepsize!r} ({type(stepsize).__name__})"
            )
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = StepLR(optimizer, step_size=stepsize, gamma=gamma)
    elif sched_name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(
                f"OPTIM.STEPSIZE must be a list of epochs for multi_step, but got {stepsize!r} "
                f"({type(stepsize).__name__}); write e.g. STEPSIZE [30, 60]"
            )
        scheduler = MultiStepLR(optimizer, milestones=list(stepsize), gamma=gamma)
    else:
        scheduler = CosineAnnealingLR(optimizer, float(max_epoch))

    warmup_epoch = _opt(optim_cfg, "WARMUP_EPOCH")
    if warmup_epoch > 0:
        if not _opt(optim_cfg, "WARMUP_RECOUNT"):
            # The successor then continues as if it had been running during warm-up.
            scheduler.last_epoch = warmup_epoch
        warmup_type = _opt(optim_cfg, "WARMUP_TYPE")
        if warmup_type == "constant":
            scheduler = ConstantWarmupScheduler(
                optimizer, scheduler, warmup_epoch, _opt(optim_cfg, "WARMUP_CONS_LR")
            )
        elif warmup_type == "linear":
            scheduler = LinearWarmupScheduler(
                optimizer, scheduler, warmup_epoch, _opt(optim_cfg, "WARMUP_MIN_LR")
            )
        else:
            raise UserValueError(f"OPTIM.WARMUP_TYPE must be one of {AVAI_WARMUPS}, but got {warmup_type!r}")
    return scheduler
