"""Checkpoint I/O: Dassl's file layout and messages, atomic writes, and loading without running file code."""

from __future__ import annotations

import builtins
import errno
import os
import random
from collections import Counter, OrderedDict, defaultdict, namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import vlprompt.io
from vlprompt.engine.checkpoint import (
    TRUST_ENV_VAR,
    CheckpointError,
    NotACheckpointError,
    PickledOptimizer,
    PickledScheduler,
    UnsafeCheckpointError,
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    check_weights_only_loadable,
    load_checkpoint,
    read_checkpoint_pointer,
    resume_checkpoint_path,
    save_checkpoint,
)
from vlprompt.engine.seeding import capture_rng_state

# Dassl-style checkpoints step schedulers without an optimiser step in some tests; torch warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


@pytest.fixture(autouse=True)
def _no_trust(monkeypatch):
    """Every test starts without the unsafe opt-in, whatever the caller's shell has set."""
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)


def _trained(optimizer_cls=torch.optim.SGD, **optim_kwargs):
    """A tiny model after one real optimisation step, so optimiser state (momentum etc.) is non-empty."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = optimizer_cls(model.parameters(), **optim_kwargs)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _typical_state(epoch: int = 3) -> dict:
    model, sgd = _trained(torch.optim.SGD, lr=0.002, momentum=0.9)
    _, adamw = _trained(torch.optim.AdamW, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(sgd, milestones=[2, 4])
    scheduler.step()
    return {
        "state_dict": model.state_dict(),
        "epoch": epoch,
        "optimizer": sgd.state_dict(),
        "scheduler": scheduler.state_dict(),  # holds a Counter (milestones)
        "val_result": None,
        "adamw": adamw.state_dict(),
        "numbers": [1, 2.5, (3, None), {"nested": torch.zeros(2, dtype=torch.float16)}],
        "python_rng": random.getstate(),
        "rng_state": capture_rng_state(),
        "misc": {"dtype": torch.float32, "device": torch.device("cpu"), "size": torch.Size([2, 3])},
    }


def _assert_same(a, b) -> None:
    """Deep equality that understands tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(a) is type(b) and list(a.keys()) == list(b.keys())
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------------------------ saving, Dassl layout
def test_typical_state_round_trips_with_weights_only(tmp_path):
    state = _typical_state()
    path = save_checkpoint(state, str(tmp_path))
    loaded = torch.load(path, weights_only=True)  # torch's own safe loader, no help from us
    _assert_same(loaded, {**state, "state_dict": OrderedDict(state["state_dict"])})
    _assert_same(load_checkpoint(path)["python_rng"], state["python_rng"])  # and through ours
    assert isinstance(loaded["scheduler"]["milestones"], Counter)


def test_dassl_file_names_pointer_and_messages(tmp_path, capsys):
    save_dir = str(tmp_path / "prompt_learner")
    state = {
        "state_dict": {"ctx": torch.ones(2)},
        "epoch": 3,
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
    }
    path = save_checkpoint(state, save_dir)
    assert path == os.path.join(save_dir, "model.pth.tar-3")
    assert capsys.readouterr().out == f"Checkpoint saved to {path}\n"
    with open(os.path.join(save_dir, "checkpoint")) as handle:
        assert handle.read() == "model.pth.tar-3\n"
    assert read_checkpoint_pointer(save_dir) == "model.pth.tar-3"

    best = save_checkpoint({**state, "epoch": 4, "val_result": 81.5}, save_dir, is_best=True)
    best_path = os.path.join(save_dir, "model-best.pth.tar")
    assert capsys.readouterr().out == (
        f'Checkpoint saved to {best}\nBest checkpoint saved to "{best_path}"\n'
    )
    with open(best, "rb") as a, open(best_path, "rb") as b:
        assert a.read() == b.read()
    assert read_checkpoint_pointer(save_dir) == "model.pth.tar-4"

    # Dassl's best_val path passes the name explicitly; the pointer then names model-best.
    named = save_checkpoint({**state, "epoch": 5}, save_dir, model_name="model-best.pth.tar")
    assert named == best_path and load_checkpoint(best_path)["epoch"] == 5
    assert read_checkpoint_pointer(save_dir) == "model-best.pth.tar"
    assert sorted(os.listdir(save_dir)) == [
        "checkpoint",
        "model-best.pth.tar",
        "model.pth.tar-3",
        "model.pth.tar-4",
    ]


def test_module_prefix_is_stripped_without_touching_the_callers_dict(tmp_path):
    weights = OrderedDict([("module.ctx", torch.ones(1)), ("meta_net.module.w", torch.zeros(1))])
    state = {"state_dict": weights, "epoch": 1}
    path = save_checkpoint(state, str(tmp_path))
    assert list(load_checkpoint(path)["state_dict"]) == ["ctx", "meta_net.module.w"]
    assert list(state["state_dict"]) == ["module.ctx", "meta_net.module.w"]  # caller's dict unchanged

    kept = save_checkpoint(state, str(tmp_path / "kept"), remove_module_from_keys=False)
    assert list(load_checkpoint(kept)["state_dict"]) == ["module.ctx", "meta_net.module.w"]


@pytest.mark.parametrize(
    ("bad_value", "where", "type_name"),
    [
        (np.float64(81.5), "state['val_result']", "numpy.float64"),
        (np.zeros(3), "state['val_result']", "numpy.ndarray"),
        (defaultdict(list), "state['val_result']", "collections.defaultdict"),
        (namedtuple("Pair", "a b")(1, 2), "state['val_result']", "Pair"),
    ],
)
def test_state_that_weights_only_cannot_load_is_refused_before_writing(tmp_path, bad_value, where, type_name):
    state = {"state_dict": {}, "epoch": 1, "val_result": bad_value}
    with pytest.raises(TypeError, match=r"weights_only=True") as info:
        save_checkpoint(state, str(tmp_path))
    assert where in str(info.value) and type_name in str(info.value)
    assert os.listdir(tmp_path) == []  # nothing written, not even a pointer


def test_live_scheduler_object_is_refused_with_its_key_path():
    _, sgd = _trained(torch.optim.SGD, lr=0.1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=10)
    state = {"scheduler": {"cons_lr": 1e-5, "successor": cosine}}
    with pytest.raises(TypeError) as info:
        check_weights_only_loadable(state)
    message = str(info.value)
    assert "state['scheduler']['successor']" in message
    assert "torch.optim.lr_scheduler.CosineAnnealingLR" in message and "state_dict()" in message


# ----------------------------------------------------------------------------------------- atomic writes
def _fail_after_partial_write(obj, handle, *args, **kwargs):
    handle.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    save_dir = str(tmp_path)
    state = {"state_dict": {"ctx": torch.arange(4.0)}, "epoch": 2}
    path = save_checkpoint(state, save_dir)
    with open(path, "rb") as handle:
        before = handle.read()

    monkeypatch.setattr(torch, "save", _fail_after_partial_write)
    with pytest.raises(OSError) as info:
        save_checkpoint({"state_dict": {"ctx": torch.zeros(4)}, "epoch": 2}, save_dir)
    assert info.value.errno == errno.ENOSPC and path in str(info.value)

    assert sorted(os.listdir(save_dir)) == ["checkpoint", "model.pth.tar-2"]  # no *.tmp left
    with open(path, "rb") as handle:
        assert handle.read() == before
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["state_dict"]["ctx"], torch.arange(4.0))


def test_new_file_never_appears_under_its_final_name_before_it_is_complete(tmp_path, monkeypatch):
    final = tmp_path / "model.pth.tar-1"
    real_save = torch.save
    seen = {}

    def watching_save(obj, handle, *args, **kwargs):
        seen["final_exists_while_writing"] = final.exists()
        seen["listing_while_writing"] = os.listdir(tmp_path)
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", watching_save)
    atomic_save({"x": torch.ones(1)}, str(final))
    assert seen["final_exists_while_writing"] is False
    # Written beside the target (so the rename is atomic), under a hidden name model.pth.tar-* globs skip.
    (temp_name,) = seen["listing_while_writing"]
    assert temp_name.startswith(".model.pth.tar-1.") and temp_name.endswith(".tmp")
    assert os.listdir(tmp_path) == ["model.pth.tar-1"]


def test_atomic_text_and_bytes_fail_cleanly(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    atomic_write_text(str(target), "model.pth.tar-1\n")
    atomic_write_bytes(str(tmp_path / "blob"), b"\x00\x01")
    assert target.read_text() == "model.pth.tar-1\n" and (tmp_path / "blob").read_bytes() == b"\x00\x01"

    fsynced = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(fd))
    atomic_write_text(str(target), "model.pth.tar-2\n")
    assert fsynced, "the data must be fsynced before the rename"

    def broken_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="checkpoint") as info:
        atomic_write_text(str(target), "model.pth.tar-3\n")
    assert info.value.errno == errno.EIO and info.value.filename == str(target)
    assert target.read_text() == "model.pth.tar-2\n"
    assert sorted(os.listdir(tmp_path)) == ["blob", "checkpoint"]


# ---------------------------------------------------------------------------- loading Dassl's pickled files
def _dassl_style_checkpoint(path, scheduler_cls=torch.optim.lr_scheduler.CosineAnnealingLR, **sched_kwargs):
    """What Dassl 0.6.3 writes: its warm-up scheduler's state holds the live successor object."""
    model, sgd = _trained(torch.optim.SGD, lr=0.002, momentum=0.9)
    successor = scheduler_cls(sgd, **sched_kwargs)
    successor.step()
    state = {
        "state_dict": model.state_dict(),
        "epoch": 2,
        "optimizer": sgd.state_dict(),
        "scheduler": {
            "cons_lr": 1e-5,
            "successor": successor,
            "warmup_epoch": 1,
            "base_lrs": [0.002],
            "last_epoch": 2,
            "_step_count": 3,
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": [0.0019],
        },
        "val_result": None,
    }
    torch.save(state, path)  # plain pickling, as Dassl does
    return model, successor


def test_dassl_checkpoint_loads_without_weights_only_false(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pth.tar-2")
    model, successor = _dassl_style_checkpoint(path, T_max=10)
    with pytest.raises(Exception, match="CosineAnnealingLR"):
        torch.load(path, weights_only=True)  # the problem being solved

    calls = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    loaded = load_checkpoint(path)
    assert calls and all(flag is True for flag in calls)

    assert loaded["epoch"] == 2 and loaded["val_result"] is None
    for key, value in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][key], value)
    assert loaded["optimizer"]["param_groups"][0]["initial_lr"] == 0.002
    assert len(loaded["optimizer"]["state"]) == 2  # momentum buffers of weight and bias

    stand_in = loaded["scheduler"]["successor"]
    assert isinstance(stand_in, PickledScheduler)
    assert stand_in.pickled_class == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert stand_in.state_dict() == successor.state_dict()
    assert isinstance(stand_in.optimizer, PickledOptimizer)
    assert stand_in.optimizer.pickled_class == "torch.optim.sgd.SGD"
    assert type(stand_in.optimizer.state) is dict  # the pickled defaultdict arrives as a plain dict


def test_dassl_classes_never_run_their_own_code_on_load(tmp_path, monkeypatch):
    path = str(tmp_path / "model.pth.tar-2")
    _dassl_style_checkpoint(path, torch.optim.lr_scheduler.MultiStepLR, milestones=[2, 4])

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickled class's own code ran during load")

    for cls in (torch.optim.lr_scheduler.MultiStepLR, torch.optim.SGD):
        monkeypatch.setattr(cls, "__init__", forbidden)
        monkeypatch.setattr(cls, "__setstate__", forbidden, raising=False)
    loaded = load_checkpoint(path)
    assert loaded["scheduler"]["successor"].milestones == Counter({2: 1, 4: 1})


def test_restricted_unpickler_fallback_for_torch_before_2_6(tmp_path, monkeypatch):
    """Older torch cannot alias pickled names; the restricted unpickler must give the same result."""
    path = str(tmp_path / "model.pth.tar-2")
    model, successor = _dassl_style_checkpoint(path, T_max=10)
    monkeypatch.setattr(vlprompt.io, "_GLOBAL_ALIASES_SUPPORTED", False)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], model.state_dict()["weight"])
    assert loaded["scheduler"]["successor"].state_dict() == successor.state_dict()


def test_dassl_checkpoint_resumes_a_warmup_scheduler(tmp_path):
    """End to end with the engine's scheduler: a real-Dassl file restores the cosine position."""
    from vlprompt.engine.optim import ConstantWarmupScheduler

    path = str(tmp_path / "model.pth.tar-2")
    _, successor = _dassl_style_checkpoint(path, T_max=10)
    _, sgd = _trained(torch.optim.SGD, lr=0.002, momentum=0.9)
    fresh = ConstantWarmupScheduler(sgd, torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=10), 1, 1e-5)
    fresh.load_state_dict(load_checkpoint(path)["scheduler"])
    assert fresh.successor.last_epoch == successor.last_epoch == 1


# ------------------------------------------------------------------------------------------ refusals
class _RunsEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _UserClass:
    pass


@pytest.mark.parametrize(
    ("payload", "global_name"), [(_RunsEval, "builtins.eval"), (_RunsShell, "posix.system")]
)
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, payload, global_name):
    if global_name == "posix.system" and os.name != "posix":
        pytest.skip("os.system pickles as nt.system on Windows")
    marker = tmp_path / "pwned"
    path = str(tmp_path / "model.pth.tar-1")
    torch.save({"state_dict": {}, "epoch": 1, "x": payload(marker)}, path)

    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert path in message and global_name in message and f"{TRUST_ENV_VAR}=1" in message
    assert isinstance(info.value, RuntimeError)
    assert not marker.exists()


def test_trusted_opt_in_loads_with_full_pickle(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = str(tmp_path / "model.pth.tar-1")
    torch.save({"state_dict": {}, "epoch": 1, "x": _RunsEval(marker)}, path)
    monkeypatch.setenv(TRUST_ENV_VAR, "1")
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = load_checkpoint(path)
    assert loaded["epoch"] == 1 and marker.exists()  # the user asked for it


def test_user_class_is_refused_by_name(tmp_path):
    path = str(tmp_path / "model.pth.tar-1")
    torch.save({"state_dict": {}, "epoch": 1, "extra": _UserClass()}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"_UserClass"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(NotACheckpointError, match=r"notes\.txt.*is not a PyTorch checkpoint"):
        load_checkpoint(str(text))

    empty = tmp_path / "model.pth.tar-1"
    empty.write_bytes(b"")
    with pytest.raises(NotACheckpointError, match=r"model\.pth\.tar-1.*empty"):
        load_checkpoint(str(empty))

    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"ctx": torch.ones(64)}, "epoch": 1}, str(whole))
    torn = tmp_path / "torn.pth"
    torn.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(NotACheckpointError, match=r"torn\.pth.*truncated or corrupt"):
        load_checkpoint(str(torn))

    with pytest.raises(NotACheckpointError, match="is a directory"):
        load_checkpoint(str(tmp_path))
    missing = str(tmp_path / "model.pth.tar-9")
    with pytest.raises(FileNotFoundError, match=r"model\.pth\.tar-9"):
        load_checkpoint(missing)
    assert issubclass(NotACheckpointError, CheckpointError)


def test_loading_errors_are_user_errors_naming_the_file(tmp_path):
    """Every refusal is one message for the command line (a UserError) that names the file."""
    from vlprompt.errors import UserError

    missing = str(tmp_path / "model.pth.tar-9")
    with pytest.raises(UserError, match=r'Checkpoint file is not found at ".*model\.pth\.tar-9"'):
        load_checkpoint(missing)
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(str(tmp_path))
    path = str(tmp_path / "model.pth.tar-1")
    torch.save({"state_dict": {}, "epoch": 1, "extra": _UserClass()}, path)
    with pytest.raises(UserError, match=r"model\.pth\.tar-1"):
        load_checkpoint(path)


def test_cuda_saved_tensors_load_on_cpu(tmp_path, monkeypatch):
    """A GPU-trained checkpoint records cuda storages; without a GPU they must map to the CPU."""
    path = str(tmp_path / "model.pth.tar-1")
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"state_dict": {"ctx": torch.arange(3.0)}, "epoch": 1}, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert loaded["state_dict"]["ctx"].device.type == "cpu"
    assert torch.equal(loaded["state_dict"]["ctx"], torch.arange(3.0))


# ------------------------------------------------------------------------------------------------ resume
def test_resume_path_follows_pointer_then_highest_epoch(tmp_path):
    directory = str(tmp_path)
    assert resume_checkpoint_path(directory) is None
    assert resume_checkpoint_path(str(tmp_path / "absent")) is None
    assert read_checkpoint_pointer(directory) is None

    for epoch in (9, 10):
        save_checkpoint({"state_dict": {}, "epoch": epoch}, directory)
    assert resume_checkpoint_path(directory) == os.path.join(directory, "model.pth.tar-10")

    atomic_write_text(os.path.join(directory, "checkpoint"), "model.pth.tar-9\n")
    assert resume_checkpoint_path(directory) == os.path.join(directory, "model.pth.tar-9")

    # Pointer gone or naming a deleted file: fall back to the highest numbered epoch (10 > 9 numerically).
    os.remove(os.path.join(directory, "checkpoint"))
    assert resume_checkpoint_path(directory) == os.path.join(directory, "model.pth.tar-10")
    atomic_write_text(os.path.join(directory, "checkpoint"), "model.pth.tar-99\n")
    assert resume_checkpoint_path(directory) == os.path.join(directory, "model.pth.tar-10")

    atomic_write_text(os.path.join(directory, "checkpoint"), "\n")
    assert read_checkpoint_pointer(directory) is None
