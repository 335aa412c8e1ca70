"""A run knows what it is, one run per output folder, no kill window: fingerprints in checkpoints and
the resume checks they drive, fallback past missing or damaged checkpoints, the output-folder lock,
stale temporary files, failed writes that name the file, and a log that is on disk line by line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, train_args
from test_train_e2e import coop_args as e2e_coop_args

from vlprompt.cli import main
from vlprompt.engine import logging as engine_logging
from vlprompt.engine.checkpoint import (
    FINGERPRINT_KEY,
    SETTINGS_KEY,
    atomic_save,
    find_resume_point,
    load_checkpoint,
    remove_stale_temp_files,
)
from vlprompt.engine.fingerprint import fingerprint
from vlprompt.engine.runlock import LOCK_FILE, OutputDirLockedError, acquire_run_lock, pid_alive
from vlprompt.engine.trainer import NoCompleteCheckpointError, ResumeMismatchError
from vlprompt.errors import UserError, UserOSError
from vlprompt.io import file_sha256


def coop_args(root, out, backbone, *extra, epochs=2, **kwargs):
    """test_train_e2e's tiny CoOp run, two epochs by default."""
    return e2e_coop_args(root, out, backbone, *extra, epochs=epochs, **kwargs)


def ctx_of(path) -> torch.Tensor:
    return load_checkpoint(str(path))["state_dict"]["ctx"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def finished(pets_root, tiny_vit, tmp_path_factory):
    """A finished 2-epoch CoOp run with a checkpoint after every epoch (model.pth.tar-1 and -2)."""
    out = tmp_path_factory.mktemp("finished")
    trainer = main(coop_args(pets_root, out, tiny_vit, "TRAIN.CHECKPOINT_FREQ", "1"))
    return out, trainer.test_results


def copy_run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


# ----------------------------------------------------------------------------- a run knows what it is
def test_checkpoints_carry_the_runs_settings_and_load_weights_only(finished, tiny_vit):
    out, _ = finished
    checkpoint = torch.load(out / "prompt_learner" / "model.pth.tar-2", weights_only=True)
    settings = checkpoint[SETTINGS_KEY]
    assert checkpoint[FINGERPRINT_KEY] == fingerprint(settings)
    assert settings["SEED"] == 1 and settings["OPTIM.LR"] == 0.05 and settings["TRAINER.NAME"] == "CoOp"
    assert settings["weights_sha256"] == file_sha256(tiny_vit)
    assert "OUTPUT_DIR" not in settings and "DATASET.ROOT" not in settings
    record = json.loads((out / "run.json").read_text())
    assert record["fingerprint"] == checkpoint[FINGERPRINT_KEY] and record["resumed_anyway"] is None


@pytest.mark.parametrize(("change", "key"), [(("--seed", "2"), "SEED: checkpoint 1, now 2"),
                                              (("OPTIM.LR", "0.1"), "OPTIM.LR: checkpoint 0.05, now 0.1")])
def test_reusing_an_output_dir_with_other_settings_is_refused(finished, pets_root, tiny_vit, tmp_path, change, key):
    out = copy_run(finished, tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "prompt_learner").iterdir()}
    args = coop_args(pets_root, out, tiny_vit, *(change if change[0].startswith("OPTIM") else ()),
                     seed=change[1] if change[0] == "--seed" else "1")
    with pytest.raises(ResumeMismatchError) as info:
        main(args)
    message = str(info.value)
    assert key in message and "--output-dir" in message and "--resume-anyway" in message
    assert {p.name: p.read_bytes() for p in (out / "prompt_learner").iterdir()} == before
    assert json.loads((out / "run.json").read_text())["seed"] == 1  # the old record is left as it was


def test_resume_anyway_continues_and_run_json_records_it(finished, pets_root, tiny_vit, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    (out / "prompt_learner" / "model.pth.tar-2").unlink()
    (out / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    trainer = main(coop_args(pets_root, out, tiny_vit, "OPTIM.LR", "0.1", flags=("--resume-anyway",)))
    assert trainer.start_epoch == 1
    assert "Warning: Resuming" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    anyway = record["resumed_anyway"]
    assert anyway["differences"] == {"OPTIM.LR": [0.05, 0.1]}
    assert anyway["checkpoint"].endswith("model.pth.tar-1")
    assert record["fingerprint"] != anyway["fingerprint"]


def test_checkpoints_without_a_fingerprint_resume_with_a_warning(finished, pets_root, tiny_vit, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    for name in ("model.pth.tar-1", "model.pth.tar-2"):
        path = out / "prompt_learner" / name
        checkpoint = load_checkpoint(str(path))
        del checkpoint[FINGERPRINT_KEY], checkpoint[SETTINGS_KEY]
        atomic_save(checkpoint, str(path))
    trainer = main(coop_args(pets_root, out, tiny_vit, seed="5"))  # unknowable, so not refused
    assert trainer.start_epoch == 2
    assert "does not record the settings of the run that wrote it" in capsys.readouterr().out


# ------------------------------------------------------------------- fallback to a complete checkpoint
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(finished, pets_root, tiny_vit, tmp_path,
                                                                      capsys):
    out = copy_run(finished, tmp_path)
    newest = out / "prompt_learner" / "model.pth.tar-2"
    expected = ctx_of(newest)
    newest.write_bytes(newest.read_bytes()[:300])
    trainer = main(coop_args(pets_root, out, tiny_vit, "TRAIN.CHECKPOINT_FREQ", "1"))
    printed = capsys.readouterr().out
    assert trainer.start_epoch == 1
    warning = next(line for line in printed.splitlines() if line.startswith("Warning:") and "truncated" in line)
    assert str(newest) in warning and str(out / "prompt_learner" / "model.pth.tar-1") in warning
    # epoch 2 trained again from epoch 1's state: the same as the first time
    assert torch.equal(ctx_of(newest), expected)
    assert trainer.test_results == finished[1]


def test_a_pointer_to_a_missing_file_falls_back_to_the_newest_complete_checkpoint(finished, tmp_path):
    out = copy_run(finished, tmp_path)
    folder = out / "prompt_learner"
    (folder / "checkpoint").write_text("model.pth.tar-7\n")
    search = find_resume_point(str(folder))
    assert search.point.path == str(folder / "model.pth.tar-2")
    assert search.missing == [f"{folder / 'checkpoint'} names model.pth.tar-7, which does not exist"]
    (folder / "checkpoint").unlink()  # no pointer at all: the numbered files still count
    assert find_resume_point(str(folder)).point.path == str(folder / "model.pth.tar-2")


def test_a_pointer_to_a_missing_file_with_nothing_else_starts_over_with_a_warning(finished, pets_root, tiny_vit,
                                                                                   tmp_path, capsys):
    out = tmp_path / "run"
    (out / "prompt_learner").mkdir(parents=True)
    (out / "prompt_learner" / "checkpoint").write_text("model.pth.tar-2\n")
    trainer = main(coop_args(pets_root, out, tiny_vit, epochs=1))
    printed = capsys.readouterr().out
    assert trainer.start_epoch == 0 and "No checkpoint found, train from scratch" in printed
    assert "names model.pth.tar-2, which does not exist, and no other checkpoint is there" in printed


def test_only_damaged_checkpoints_stop_the_run_naming_them(finished, pets_root, tiny_vit, tmp_path):
    out = copy_run(finished, tmp_path)
    for name in ("model.pth.tar-1", "model.pth.tar-2"):
        (out / "prompt_learner" / name).write_bytes(b"")
    with pytest.raises(NoCompleteCheckpointError, match=r"model.pth.tar-2.* is empty.*Delete the damaged"):
        main(coop_args(pets_root, out, tiny_vit))


# --------------------------------------------------------------------------- one run per output folder
def test_a_held_lock_refuses_a_second_run_before_any_work(pets_root, tiny_vit, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import sys, time; from vlprompt.engine.runlock import acquire_run_lock; "
         "lock = acquire_run_lock(sys.argv[1]); print('held', flush=True); time.sleep(120)"), str(out)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirLockedError) as info:
            main(coop_args(pets_root, out, tiny_vit))
        message = str(info.value)
        assert f"pid {holder.pid}" in message and str(out / LOCK_FILE) in message and "--output-dir" in message
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no log, nothing else
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_of_a_live_process_is_refused_even_without_flock(tmp_path):
    # as a file system without flock, or an older writer, would leave it: only the pid says it is alive
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "started": "2026-01-01T00:00:00+00:00"}))
    with pytest.raises(OutputDirLockedError, match=f"pid {os.getppid()}, started 2026-01-01"):
        acquire_run_lock(str(tmp_path))
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1234, "host": "elsewhere.example"}))
    with pytest.raises(OutputDirLockedError, match="on host elsewhere.example.*delete"):
        acquire_run_lock(str(tmp_path))


def test_a_stale_lock_is_taken_over_with_a_warning_and_removed_at_the_end(pets_root, tiny_vit, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    gone = dead_pid()
    (out / LOCK_FILE).write_text(json.dumps({"pid": gone, "host": socket.gethostname(), "started": "then"}))
    main(coop_args(pets_root, out, tiny_vit, epochs=1))
    assert f"Warning: {out / LOCK_FILE} was left by a run (pid {gone}, started then)" in capsys.readouterr().out
    assert not (out / LOCK_FILE).exists()


def test_one_process_cannot_take_its_own_held_lock_twice(tmp_path):
    lock = acquire_run_lock(str(tmp_path))
    try:
        with pytest.raises(OutputDirLockedError):
            acquire_run_lock(str(tmp_path))
    finally:
        lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    acquire_run_lock(str(tmp_path)).release()


def test_resume_removes_only_dead_writers_temp_files(finished, pets_root, tiny_vit, tmp_path):
    out = copy_run(finished, tmp_path)
    folder = out / "prompt_learner"
    live = folder / f".model.pth.tar-3.{os.getppid()}.0123abcd.tmp"
    dead = folder / f".model.pth.tar-3.{dead_pid()}.89abcdef.tmp"
    live.write_bytes(b"in flight")
    dead.write_bytes(b"left by a killed writer")
    assert pid_alive(os.getppid())
    main(coop_args(pets_root, out, tiny_vit))
    assert live.read_bytes() == b"in flight" and not dead.exists()
    assert remove_stale_temp_files(str(folder)) == []


# ------------------------------------------------------------------------------------- failed writes
class FullDisk:
    """A file whose writes fail with ENOSPC once ``trigger`` has been written (or at once)."""

    def __init__(self, handle, trigger: str | bytes | None = None) -> None:
        self.handle, self.trigger, self.full = handle, trigger, trigger is None

    def write(self, data):
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        if self.trigger in data:
            self.full = True
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_while_checkpointing_names_the_file_and_the_intact_checkpoint(finished, pets_root, tiny_vit,
                                                                                  tmp_path, monkeypatch):
    from vlprompt.engine import checkpoint as checkpoint_module

    out = tmp_path / "run"
    real_fdopen = os.fdopen
    calls = []

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        calls.append(1)
        return FullDisk(handle) if len(calls) == 3 else handle  # epoch 1: checkpoint, pointer; epoch 2: full

    monkeypatch.setattr(checkpoint_module.os, "fdopen", fdopen)
    with pytest.raises(UserOSError) as info:
        main(coop_args(pets_root, out, tiny_vit, "TRAIN.CHECKPOINT_FREQ", "1"))
    folder = out / "prompt_learner"
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"no space left writing {folder / 'model.pth.tar-2'}; the previous checkpoint "
                                      f"{folder / 'model.pth.tar-1'} is intact")
    assert "unexpected pos" not in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint", "model.pth.tar-1"]  # no temp file
    assert not (out / "run.json").exists()
    monkeypatch.undo()
    resumed = main(coop_args(pets_root, out, tiny_vit, "TRAIN.CHECKPOINT_FREQ", "1"))
    assert resumed.start_epoch == 1 and resumed.test_results == finished[1]
    assert torch.equal(ctx_of(folder / "model.pth.tar-2"), ctx_of(finished[0] / "prompt_learner" / "model.pth.tar-2"))


def test_disk_full_on_the_log_leaves_no_complete_record(pets_root, tiny_vit, tmp_path, monkeypatch):
    real_open = open

    def log_open(path, *args, **kwargs):
        return FullDisk(real_open(path, *args, **kwargs), trigger="Finish training")

    monkeypatch.setattr(engine_logging, "open", log_open, raising=False)
    out = tmp_path / "run"
    with pytest.raises(UserOSError, match=f"no space left writing {out / 'log.txt'}; the lines printed before"):
        main(coop_args(pets_root, out, tiny_vit, epochs=1))
    assert not (out / "run.json").exists()
    assert "Finish training" in (out / "log.txt").read_text()


def test_log_is_written_line_by_line(tmp_path):
    path = engine_logging.setup_logger(str(tmp_path))
    try:
        print("first line")
        assert Path(path).read_text() == "first line\n"  # on disk before the process could be killed
    finally:
        engine_logging.teardown_logger()


def test_write_errors_are_user_errors_naming_what_is_intact():
    from vlprompt.errors import write_error

    full = write_error(OSError(errno.ENOSPC, "No space left on device"), "/out/x", "the previous x is intact")
    assert isinstance(full, UserError) and isinstance(full, OSError) and full.errno == errno.ENOSPC
    assert str(full) == "no space left writing /out/x; the previous x is intact"
    again = write_error(full, "/out/x", "something else is intact")  # reworded, not nested
    assert str(again) == "no space left writing /out/x; something else is intact"
    denied = write_error(PermissionError(errno.EACCES, "Permission denied"), "/out/y", "")
    assert str(denied) == "could not write /out/y (Permission denied)"


# ---------------------------------------------------------------------------------------------- TPT
RES = 64
TPT_FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE", f"({RES}, {RES})", "TRAINER.TPT.N_VIEWS", "4",
            "TRAINER.TPT.SELECTION_P", "0.5", "TRAINER.TPT.PRINT_FREQ", "5"]


def tpt_args(root, out, backbone, *extra):
    return train_args(root, out, "TPT", "trainers/TPT/vit_b16.yaml", "--seed", "1",
                      "MODEL.BACKBONE.NAME", str(backbone), *TPT_FAST, *extra)


def tpt_log(out) -> Path:
    return Path(out) / "tpt_predictions" / "OxfordPets.jsonl"


def test_tpt_log_checks_the_weights_hash(pets_root, tmp_path, capsys):
    from vlprompt.tiny_clip import save_tiny_clip
    from vlprompt.tta.records import PredictionLogError

    weights = save_tiny_clip(tmp_path / "clip.pt", "vit", image_resolution=RES)
    out = tmp_path / "out"
    main(tpt_args(pets_root, out, weights, "TRAINER.TPT.STEPS", "0"))
    header = json.loads(tpt_log(out).read_text().splitlines()[0])
    assert header["weights_sha256"] == file_sha256(weights)

    save_tiny_clip(weights, "vit", seed=1, image_resolution=RES)  # same name, other weights
    time.sleep(0.01)
    with pytest.raises(PredictionLogError, match="weights_sha256"):
        main(tpt_args(pets_root, out, weights, "TRAINER.TPT.STEPS", "0"))

    # a log written before the hash was recorded is continued, with a warning
    lines = tpt_log(out).read_text().splitlines()
    old_header = json.loads(lines[0])
    del old_header["weights_sha256"]
    tpt_log(out).write_text("\n".join([json.dumps(old_header), *lines[1:]]) + "\n")
    capsys.readouterr()
    main(tpt_args(pets_root, out, weights, "TRAINER.TPT.STEPS", "0"))
    assert "was written before vlprompt recorded weights_sha256" in capsys.readouterr().out


def test_tpt_disk_full_at_the_end_leaves_no_complete_record_and_resumes(pets_root, tmp_path, monkeypatch):
    from vlprompt.tiny_clip import save_tiny_clip

    weights = save_tiny_clip(tmp_path / "clip.pt", "vit", image_resolution=RES)
    straight = main(tpt_args(pets_root, tmp_path / "straight", weights, "TRAINER.TPT.STEPS", "0"))
    real_open = open

    def log_open(path, *args, **kwargs):
        return FullDisk(real_open(path, *args, **kwargs), trigger=" *  Acc@1")

    monkeypatch.setattr(engine_logging, "open", log_open, raising=False)
    out = tmp_path / "out"
    with pytest.raises(UserOSError, match="no space left writing .*log.txt"):
        main(tpt_args(pets_root, out, weights, "TRAINER.TPT.STEPS", "0"))
    assert not (out / "run.json").exists()
    assert len(tpt_log(out).read_text().splitlines()) == 1 + 20  # every prediction was logged
    monkeypatch.undo()
    again = main(tpt_args(pets_root, out, weights, "TRAINER.TPT.STEPS", "0"))
    assert again.test_results == straight.test_results
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_tpt_ctrl_c_says_which_image_it_stopped_at(pets_root, tmp_path, monkeypatch, capsys):
    from vlprompt.cli import command
    from vlprompt.tiny_clip import save_tiny_clip
    from vlprompt.tta.tuner import PromptTuner

    weights = save_tiny_clip(tmp_path / "clip.pt", "vit", image_resolution=RES)
    tune, calls = PromptTuner.tune, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return tune(self, *args, **kwargs)

    monkeypatch.setattr(PromptTuner, "tune", interrupted)
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        command(tpt_args(pets_root, tmp_path / "out", weights, "TRAINER.TPT.STEPS", "0"))
    assert stop.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "train.py: interrupted; stopped at image 4 of 20 of OxfordPets (3 predictions logged); run the same "
        "command again to continue from there")
