"""The command line's error path: one message for a user's mistake, one line for Ctrl-C, tracebacks
for programming errors (and for everything with VLPROMPT_DEBUG=1)."""

from __future__ import annotations

import errno
import itertools
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, config_file

from vlprompt.errors import UserError, UserKeyError, describe, run_cli


def _raise(err: BaseException):
    def main():
        raise err
    return main


def test_user_error_prints_one_message_and_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_cli(_raise(UserKeyError('"Nope" is not a registered trainer name')), program="train.py")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == 'train.py: error: "Nope" is not a registered trainer name\n'


def test_os_errors_count_as_environment_errors(capsys, monkeypatch):
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    full = OSError(errno.ENOSPC, "No space left on device", "/out/model.pth.tar-1")
    with pytest.raises(SystemExit) as stop:
        run_cli(_raise(full), program="train.py")
    assert stop.value.code == 2
    assert "no space left on the device writing /out/model.pth.tar-1" in capsys.readouterr().err


def test_interrupt_prints_one_line_and_exits_130(capsys, monkeypatch):
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        run_cli(_raise(KeyboardInterrupt()), program="train.py", resume_hint=lambda: "rerun to resume")
    assert stop.value.code == 130
    assert capsys.readouterr().err == "train.py: interrupted; rerun to resume\n"


def test_programming_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("VLPROMPT_DEBUG", raising=False)
    with pytest.raises(ZeroDivisionError):
        run_cli(_raise(ZeroDivisionError("bug")), program="train.py")


def test_debug_shows_user_errors_as_raised(monkeypatch):
    monkeypatch.setenv("VLPROMPT_DEBUG", "1")
    with pytest.raises(UserError):
        run_cli(_raise(UserError("bad value")), program="train.py")


def test_describe_keeps_notes():
    err = UserError("cannot read x")
    err.add_note("the previous file is intact")
    assert describe(err) == "cannot read x\nthe previous file is intact"


def test_train_py_unknown_trainer_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--root", str(tmp_path), "--trainer", "CoOpp",
         "--dataset-config-file", config_file("datasets/oxford_pets.yaml"), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "VLPROMPT_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith('train.py: error: "CoOpp" is not a registered trainer name. Did you mean "CoOp"?')


def test_library_log_records_reach_the_run_log(tmp_path):
    import logging

    from vlprompt.engine.logging import setup_logger, teardown_logger

    path = setup_logger(str(tmp_path))
    try:
        logging.getLogger("vlprompt.datasets.example").warning("class 3 has 2 images, 4 shots asked")
        logging.getLogger("vlprompt.engine").info("plain line")
    finally:
        teardown_logger()
    from pathlib import Path

    assert Path(path).read_text().splitlines() == ["Warning: class 3 has 2 images, 4 shots asked", "plain line"]


def _train_py(*args: str, cwd, debug: bool = False) -> subprocess.Popen:
    env = {"PATH": "/usr/bin:/bin", "VLPROMPT_OFFLINE": "1", "VLPROMPT_CLIP_DIR": str(cwd / "no_weights")}
    if debug:
        env["VLPROMPT_DEBUG"] = "1"
    return subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)


def test_user_errors_on_the_command_line_are_one_line_exit_2_without_traceback(pets_root, tiny_vit, tmp_path):
    (tmp_path / "not_a_checkpoint.pth").write_text("these are not weights\n")
    (tmp_path / "file").write_text("a file where a folder should be")
    numbers = itertools.count()

    def args(*extra: str, root: str = pets_root, out: str = "", trainer: str = "CoOp") -> list[str]:
        out = out or str(tmp_path / f"out{next(numbers)}")  # the runs go concurrently: one folder each
        return ["--root", root, "--trainer", trainer, "--dataset-config-file", config_file("datasets/oxford_pets.yaml"),
                "--config-file", config_file("trainers/CoOp/vit_b16.yaml"), "--output-dir", out,
                "DATALOADER.NUM_WORKERS", "0", "TRAINER.COOP.PREC", "fp32", *extra]

    cases = {
        "unknown trainer": (args("MODEL.BACKBONE.NAME", tiny_vit, trainer="CoOpp"),
                            '"CoOpp" is not a registered trainer name. Did you mean "CoOp"?'),
        "unknown key": (args("OPTIM.MAX_EPOCHS", "2"), "OPTIM.MAX_EPOCH"),
        "missing weights": (args(), "ViT-B-16.pt"),
        "missing root": (args("MODEL.BACKBONE.NAME", tiny_vit, root=str(tmp_path / "nowhere")),
                         f'DATASET.ROOT "{tmp_path / "nowhere"}" does not exist'),
        "non-checkpoint file": (args("MODEL.BACKBONE.NAME", tiny_vit, "MODEL.INIT_WEIGHTS",
                                     str(tmp_path / "not_a_checkpoint.pth")), "is not a PyTorch checkpoint"),
        "unwritable output dir": (args("MODEL.BACKBONE.NAME", tiny_vit, out=str(tmp_path / "file" / "out")),
                                  "is not writable"),
        "unknown optimiser": (args("MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.NAME", "adamm"),
                              "OPTIM.NAME must be one of"),
        "unsupported sampler": (args("MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.TRAIN_X.SAMPLER",
                                     "RandomDomainSampler"), "is not implemented by the built-in engine"),
    }
    procs = {name: _train_py(*argv, cwd=tmp_path) for name, (argv, _) in cases.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, err[-2000:])
        assert len(lines) == 1 and "Traceback" not in err, (name, err[-2000:])
        assert lines[0].startswith("train.py: error: ") and cases[name][1] in lines[0], (name, lines[0])


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    proc = _train_py("--root", str(tmp_path), "--trainer", "CoOpp", "--output-dir", str(tmp_path / "out"),
                     cwd=tmp_path, debug=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" in err and "is not a registered trainer name" in err
