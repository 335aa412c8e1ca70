"""The command line's error path: one message for a user's mistake, one line for Ctrl-C, tracebacks
for programming errors (and for everything with VLPROMPT_DEBUG=1)."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, config_file
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
