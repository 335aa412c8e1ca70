"""Optimiser and LR-scheduler builders: Dassl's hyper-parameters, its exact per-epoch LR sequence, safe state."""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from vlprompt.engine.optim import (
    OPTIM_DEFAULTS,
    ConstantWarmupScheduler,
    LinearWarmupScheduler,
    build_lr_scheduler,
    build_optimizer,
)

# Every scheduler step below happens without a preceding optimizer.step(); torch warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")

COOP_OPTIM = {
    "NAME": "sgd",
    "LR": 0.002,
    "MAX_EPOCH": 10,
    "LR_SCHEDULER": "cosine",
    "WARMUP_EPOCH": 1,
    "WARMUP_TYPE": "constant",
    "WARMUP_CONS_LR": 1e-5,
}


def optim_cfg(**overrides) -> dict:
    """A complete OPTIM node (Dassl defaults + overrides); build_* read dicts the same as CfgNodes."""
    cfg = dict(OPTIM_DEFAULTS)
    cfg.update(overrides)
    return cfg


def make_optimizer(cfg: dict, num_groups: int = 1) -> torch.optim.Optimizer:
    if num_groups == 1:
        return build_optimizer([nn.Parameter(torch.zeros(3))], cfg)
    groups = [
        {"params": [nn.Parameter(torch.zeros(3))], "lr": cfg["LR"] * (i + 1)} for i in range(num_groups)
    ]
    return build_optimizer(None, cfg, param_groups=groups)


def lr_per_epoch(cfg: dict, num_epochs: int, num_groups: int = 1) -> list[list[float]]:
    """The LRs each epoch trains at, stepping the scheduler once after each epoch as the trainer does."""
    optimizer = make_optimizer(cfg, num_groups)
    scheduler = build_lr_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(num_epochs):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


class DasslReference:
    """A literal, pure-Python re-enactment of Dassl's warm-up wrapper around torch's chainable schedulers."""

    def __init__(self, cfg: dict, base_lrs: list[float]) -> None:
        self.cfg = cfg
        self.base_lrs = list(base_lrs)
        self.group_lrs = list(base_lrs)
        # The successor is built first: counter 0, its last LR is the base LR.
        self.successor_epoch = 0
        self.successor_last = list(base_lrs)
        self.warmup = max(0, cfg["WARMUP_EPOCH"])
        if self.warmup:
            if not cfg["WARMUP_RECOUNT"]:
                self.successor_epoch = self.warmup
            self.warmup_epoch = 0
            self.group_lrs = self._warmup_lrs()

    def _warmup_lrs(self) -> list[float]:
        if self.warmup_epoch >= self.warmup:
            return list(self.successor_last)
        if self.cfg["WARMUP_TYPE"] == "constant":
            return [self.cfg["WARMUP_CONS_LR"]] * len(self.base_lrs)
        if self.warmup_epoch == 0:
            return [self.cfg["WARMUP_MIN_LR"]] * len(self.base_lrs)
        return [b * self.warmup_epoch / self.warmup for b in self.base_lrs]

    def _successor_step(self) -> None:
        self.successor_epoch += 1
        k = self.successor_epoch
        name, gamma = self.cfg["LR_SCHEDULER"], self.cfg["GAMMA"]
        new = []
        for lr, base in zip(self.group_lrs, self.base_lrs):
            if name == "cosine":
                t_max = float(self.cfg["MAX_EPOCH"])
                if (k - 1 - t_max) % (2 * t_max) == 0:
                    new.append(lr + base * (1 - math.cos(math.pi / t_max)) / 2)
                else:
                    new.append(
                        (1 + math.cos(math.pi * k / t_max)) / (1 + math.cos(math.pi * (k - 1) / t_max)) * lr
                    )
            elif name == "single_step":
                step = self.cfg["STEPSIZE"]
                step = step[-1] if isinstance(step, (list, tuple)) else step
                step = step if step > 0 else self.cfg["MAX_EPOCH"]
                new.append(lr * gamma if k % step == 0 else lr)
            else:
                new.append(lr * gamma ** list(self.cfg["STEPSIZE"]).count(k))
        self.group_lrs = new
        self.successor_last = list(new)

    def step(self) -> None:
        if self.warmup and self.warmup_epoch < self.warmup:
            self.warmup_epoch += 1
            self.group_lrs = self._warmup_lrs()
        else:
            self._successor_step()

    def sequence(self, num_epochs: int) -> list[list[float]]:
        out = []
        for _ in range(num_epochs):
            out.append(list(self.group_lrs))
            self.step()
        return out


@pytest.mark.parametrize("max_epoch", [10, 200])
def test_coop_config_lr_sequence_matches_the_shifted_cosine(max_epoch):
    cfg = optim_cfg(**{**COOP_OPTIM, "MAX_EPOCH": max_epoch})
    lrs = [group_lrs[0] for group_lrs in lr_per_epoch(cfg, max_epoch)]
    expected = [1e-5] + [
        0.5 * 0.002 * (1 + math.cos(math.pi * (e - 2) / max_epoch)) for e in range(2, max_epoch + 1)
    ]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-20)
    assert lrs[1] == 0.002  # the cosine restarts from the full LR in epoch 2
    if max_epoch == 10:
        assert lrs[-1] == pytest.approx(1.9098300562505e-4, rel=1e-12)


def test_linear_warmup_with_single_step_by_hand():
    cfg = optim_cfg(
        LR=0.1,
        LR_SCHEDULER="single_step",
        STEPSIZE=(2,),
        GAMMA=0.5,
        WARMUP_EPOCH=3,
        WARMUP_TYPE="linear",
        WARMUP_MIN_LR=1e-5,
    )
    expected = [1e-5, 0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.05, 0.05, 0.025]
    assert [lrs[0] for lrs in lr_per_epoch(cfg, 8)] == pytest.approx(expected, rel=1e-12)
    # Without recount the step counter starts at 3 during warm-up, so the first decay comes at epoch 5.
    cfg["WARMUP_RECOUNT"] = False
    expected = [1e-5, 0.1 / 3, 0.2 / 3, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert [lrs[0] for lrs in lr_per_epoch(cfg, 8)] == pytest.approx(expected, rel=1e-12)


SCHEDULE_CASES = {
    "cosine-linear-warmup": {
        "LR_SCHEDULER": "cosine",
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 3,
        "WARMUP_TYPE": "linear",
    },
    "cosine-no-recount": {
        "LR_SCHEDULER": "cosine",
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 2,
        "WARMUP_TYPE": "constant",
        "WARMUP_RECOUNT": False,
    },
    "cosine-linear-no-recount": {
        "LR_SCHEDULER": "cosine",
        "MAX_EPOCH": 9,
        "WARMUP_EPOCH": 4,
        "WARMUP_TYPE": "linear",
        "WARMUP_RECOUNT": False,
    },
    "cosine-no-warmup": {"LR_SCHEDULER": "cosine", "MAX_EPOCH": 8},
    "single-step-default-stepsize": {"LR_SCHEDULER": "single_step", "STEPSIZE": (-1,), "MAX_EPOCH": 4},
    "single-step-linear": {
        "LR_SCHEDULER": "single_step",
        "STEPSIZE": (3,),
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 2,
    },
    "single-step-no-recount": {
        "LR_SCHEDULER": "single_step",
        "STEPSIZE": 4,
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 3,
        "WARMUP_RECOUNT": False,
    },
    "multi-step": {"LR_SCHEDULER": "multi_step", "STEPSIZE": [3, 6, 6], "MAX_EPOCH": 12},
    "multi-step-constant": {
        "LR_SCHEDULER": "multi_step",
        "STEPSIZE": [2, 5],
        "MAX_EPOCH": 10,
        "WARMUP_EPOCH": 2,
        "WARMUP_TYPE": "constant",
    },
    "multi-step-no-recount": {
        "LR_SCHEDULER": "multi_step",
        "STEPSIZE": [2, 5, 7],
        "MAX_EPOCH": 10,
        "WARMUP_EPOCH": 3,
        "WARMUP_RECOUNT": False,
    },
}


@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
@pytest.mark.parametrize("num_groups", [1, 2])
def test_lr_sequence_matches_reference_reimplementation(case, num_groups):
    cfg = optim_cfg(NAME="sgd", LR=0.01, GAMMA=0.3, WARMUP_MIN_LR=2e-5, **SCHEDULE_CASES[case])
    got = lr_per_epoch(cfg, cfg["MAX_EPOCH"], num_groups)
    base_lrs = [cfg["LR"] * (i + 1) for i in range(num_groups)]
    expected = DasslReference(cfg, base_lrs).sequence(cfg["MAX_EPOCH"])
    for epoch, (got_lrs, expected_lrs) in enumerate(zip(got, expected), start=1):
        assert got_lrs == pytest.approx(expected_lrs, rel=1e-12, abs=1e-20), f"epoch {epoch}"


def test_cosine_without_recount_rescales_the_remaining_curve():
    # Dassl's chainable cosine starts from the full LR at counter W, so later epochs are the cosine
    # curve divided by its value at W (not the plain cosine): pin that derivation.
    cfg = optim_cfg(
        LR=1.0,
        LR_SCHEDULER="cosine",
        MAX_EPOCH=10,
        WARMUP_EPOCH=2,
        WARMUP_TYPE="constant",
        WARMUP_RECOUNT=False,
    )
    lrs = [lrs[0] for lrs in lr_per_epoch(cfg, 10)]
    for epoch in range(3, 11):
        k = epoch - 1
        assert lrs[epoch - 1] == pytest.approx(
            (1 + math.cos(math.pi * k / 10)) / (1 + math.cos(math.pi * 2 / 10))
        )


def _assert_plain(value, path="state"):
    plain = (bool, int, float, str, type(None), torch.Tensor)
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{path} key {key!r}"
            _assert_plain(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _assert_plain(item, f"{path}[{i}]")
    else:
        assert isinstance(value, plain), f"{path} is a {type(value).__name__}"


RESUME_CASES = {
    "coop": COOP_OPTIM,
    "linear-no-recount": {
        "LR_SCHEDULER": "cosine",
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 3,
        "WARMUP_RECOUNT": False,
    },
    "multi-step-warmup": {
        "LR_SCHEDULER": "multi_step",
        "STEPSIZE": [4, 8],
        "MAX_EPOCH": 12,
        "WARMUP_EPOCH": 2,
    },
    "single-step-plain": {"LR_SCHEDULER": "single_step", "STEPSIZE": (3,), "MAX_EPOCH": 12},
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
@pytest.mark.parametrize("stop_after", [0, 1, 2, 5])
def test_state_dict_round_trip_continues_the_same_sequence(case, stop_after, tmp_path):
    cfg = optim_cfg(**{"NAME": "sgd", "LR": 0.002, **RESUME_CASES[case]})
    num_epochs = cfg["MAX_EPOCH"]
    uninterrupted = lr_per_epoch(cfg, num_epochs)

    optimizer = make_optimizer(cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    seen = []
    for _ in range(stop_after):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    _assert_plain(state)
    path = tmp_path / "ckpt.pth"
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": state}, path)

    # A fresh run builds everything anew, then restores (the trainer's resume order).
    checkpoint = torch.load(path, weights_only=True)
    resumed_optimizer = make_optimizer(cfg)
    resumed = build_lr_scheduler(resumed_optimizer, cfg)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    assert resumed.get_last_lr() == scheduler.get_last_lr()
    for _ in range(stop_after, num_epochs):
        seen.append([g["lr"] for g in resumed_optimizer.param_groups])
        resumed_optimizer.step()
        resumed.step()
    assert seen == uninterrupted


def test_warmup_state_nests_the_successor_state_and_restores_it():
    cfg = optim_cfg(**COOP_OPTIM)
    optimizer = make_optimizer(cfg)
    scheduler = build_lr_scheduler(optimizer, cfg)
    assert isinstance(scheduler, ConstantWarmupScheduler)
    for _ in range(4):
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 1 and state["successor"]["last_epoch"] == 3
    assert "optimizer" not in state and "optimizer" not in state["successor"]

    other = build_lr_scheduler(make_optimizer(cfg), cfg)
    other.load_state_dict(state)
    assert other.successor.last_epoch == 3 and other.last_epoch == 1
    assert other.successor.optimizer is not scheduler.optimizer  # the object graph is untouched


def test_load_state_dict_accepts_dassl_pickled_successor():
    # Real Dassl checkpoints hold the successor scheduler object itself under "successor".
    cfg = optim_cfg(**COOP_OPTIM)
    dassl_like = build_lr_scheduler(make_optimizer(cfg), cfg)
    for _ in range(3):
        dassl_like.step()
    state = {k: v for k, v in dassl_like.__dict__.items() if k != "optimizer"}
    ours = build_lr_scheduler(make_optimizer(cfg), cfg)
    ours.load_state_dict(state)
    assert ours.successor.last_epoch == 2
    assert ours.get_last_lr() == dassl_like.get_last_lr()


def test_multi_step_state_loads_with_weights_only():
    cfg = optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=[2, 4])
    scheduler = build_lr_scheduler(make_optimizer(cfg), cfg)
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["milestones"] == Counter({2: 1, 4: 1})


def test_scheduler_types_and_errors():
    optimizer = make_optimizer(optim_cfg())
    assert isinstance(build_lr_scheduler(optimizer, optim_cfg(WARMUP_EPOCH=2)), LinearWarmupScheduler)
    assert isinstance(
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="single_step")), torch.optim.lr_scheduler.StepLR
    )
    with pytest.raises(ValueError, match=r"OPTIM.LR_SCHEDULER.*'cosine'.*'warm'"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="warm"))
    with pytest.raises(ValueError, match=r"OPTIM.WARMUP_TYPE.*'constant', 'linear'.*'exp'"):
        build_lr_scheduler(optimizer, optim_cfg(WARMUP_EPOCH=1, WARMUP_TYPE="exp"))
    with pytest.raises(TypeError, match="OPTIM.STEPSIZE must be an integer"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2.5,)))
    with pytest.raises(TypeError, match="OPTIM.STEPSIZE must be a list"):
        build_lr_scheduler(optimizer, optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3))
    with pytest.raises(TypeError, match="takes no epoch"):
        build_lr_scheduler(optimizer, optim_cfg(WARMUP_EPOCH=1)).step(3)


def test_works_with_a_yacs_cfgnode():
    from yacs.config import CfgNode

    optimizer = build_optimizer(nn.Linear(2, 2), CfgNode(optim_cfg(**COOP_OPTIM)))
    scheduler = build_lr_scheduler(optimizer, CfgNode(optim_cfg(**COOP_OPTIM)))
    assert optimizer.param_groups[0]["lr"] == 1e-5
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.002


HYPER = {
    "LR": 0.05,
    "WEIGHT_DECAY": 0.01,
    "MOMENTUM": 0.8,
    "SGD_DAMPNING": 0.1,
    "RMSPROP_ALPHA": 0.95,
    "ADAM_BETA1": 0.85,
    "ADAM_BETA2": 0.99,
}


@pytest.mark.parametrize(
    "name, cls, expected",
    [
        ("adam", torch.optim.Adam, {"betas": (0.85, 0.99), "amsgrad": False}),
        ("amsgrad", torch.optim.Adam, {"betas": (0.85, 0.99), "amsgrad": True}),
        ("sgd", torch.optim.SGD, {"momentum": 0.8, "dampening": 0.1, "nesterov": False}),
        ("rmsprop", torch.optim.RMSprop, {"momentum": 0.8, "alpha": 0.95}),
        ("radam", torch.optim.RAdam, {"betas": (0.85, 0.99), "decoupled_weight_decay": True}),
        ("adamw", torch.optim.AdamW, {"betas": (0.85, 0.99)}),
    ],
)
def test_each_optimizer_gets_dassl_hyper_parameters(name, cls, expected):
    optimizer = build_optimizer(nn.Linear(3, 2), optim_cfg(NAME=name, **HYPER))
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05 and group["weight_decay"] == 0.01
    for key, value in expected.items():
        assert group[key] == value, key
    assert len(group["params"]) == 2


def test_sgd_nesterov_and_unknown_name():
    optimizer = build_optimizer(nn.Linear(3, 2), optim_cfg(NAME="sgd", SGD_NESTEROV=True, SGD_DAMPNING=0))
    assert optimizer.param_groups[0]["nesterov"] is True
    with pytest.raises(
        ValueError, match=r"OPTIM.NAME must be one of \['adam', 'amsgrad', 'sgd', .*'adamw'\].*'lion'"
    ):
        build_optimizer(nn.Linear(3, 2), optim_cfg(NAME="lion"))


def _dassl_radam_steps(param, grads, lr, betas, eps, weight_decay):
    """Liu et al.'s RAdam as bundled in Dassl (degenerates to SGD-momentum while N_sma < 5)."""
    beta1, beta2 = betas
    exp_avg = torch.zeros_like(param)
    exp_avg_sq = torch.zeros_like(param)
    p = param.clone()
    for step, grad in enumerate(grads, start=1):
        exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * grad * grad
        exp_avg = exp_avg * beta1 + (1 - beta1) * grad
        beta2_t = beta2**step
        n_sma_max = 2 / (1 - beta2) - 1
        n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
        p = p - weight_decay * lr * p
        if n_sma >= 5:
            step_size = math.sqrt(
                (1 - beta2_t)
                * (n_sma - 4)
                / (n_sma_max - 4)
                * (n_sma - 2)
                / n_sma
                * n_sma_max
                / (n_sma_max - 2)
            ) / (1 - beta1**step)
            p = p - step_size * lr * exp_avg / (exp_avg_sq.sqrt() + eps)
        else:
            p = p - lr / (1 - beta1**step) * exp_avg
    return p


def test_radam_follows_dassl_update_rule():
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(12)]  # covers both RAdam regimes
    param = nn.Parameter(start.clone())
    optimizer = build_optimizer([param], optim_cfg(NAME="radam", LR=0.01, WEIGHT_DECAY=0.1, ADAM_BETA2=0.9))
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    expected = _dassl_radam_steps(start, grads, 0.01, (0.9, 0.9), 1e-8, 0.1)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-10, atol=1e-12)


class TwoPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)


def test_staged_lr_splits_children_into_base_and_new_groups():
    model = TwoPart()
    cfg = optim_cfg(NAME="sgd", LR=0.1, STAGED_LR=True, NEW_LAYERS=("head",), BASE_LR_MULT=0.2)
    optimizer = build_optimizer(model, cfg)
    base, new = optimizer.param_groups
    assert base["lr"] == pytest.approx(0.02) and new["lr"] == 0.1
    assert {id(p) for p in base["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in new["params"]} == {id(p) for p in model.head.parameters()}
    # A single string is one layer name, and DataParallel is unwrapped, as in Dassl.
    optimizer = build_optimizer(nn.DataParallel(model), optim_cfg(**{**cfg, "NEW_LAYERS": "head"}))
    assert len(optimizer.param_groups[1]["params"]) == 2

    with pytest.raises(TypeError, match="STAGED_LR is True.*nn.Module"):
        build_optimizer(list(model.parameters()), cfg)
    with pytest.warns(UserWarning, match=r"\['neck'\] that are not direct children"):
        build_optimizer(model, optim_cfg(**{**cfg, "NEW_LAYERS": ("neck",)}))


def test_params_iterables_and_param_groups():
    model = TwoPart()
    cfg = optim_cfg(NAME="adam", LR=0.01)
    optimizer = build_optimizer((p for p in model.head.parameters()), cfg)
    assert len(optimizer.param_groups[0]["params"]) == 2
    groups = [{"params": model.backbone.parameters(), "lr": 0.5}, {"params": model.head.parameters()}]
    optimizer = build_optimizer(model, cfg, param_groups=groups)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.01]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_optimizer(
            model,
            optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",)),
            param_groups=[{"params": model.head.parameters()}],
        )
    assert any("STAGED_LR is ignored" in str(w.message) for w in caught)
