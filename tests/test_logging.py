"""Library messages go through ``logging``: a run's console and log.txt keep CoOp/Dassl's lines byte for byte,
the library is silent until its user configures logging, and quieting is done with levels, not stdout."""

from __future__ import annotations

import ast
import contextlib
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, train_args

from vlprompt.engine import logging as engine_logging
from vlprompt.engine.logging import muted, quiet_console, setup_logger, teardown_logger
from vlprompt.errors import UserOSError

EXPECTED_COOP_LOG = Path(__file__).parent / "data" / "coop_log_lines.txt"
# Modules whose print() is their product (a command's report, table or usage error), not a log line.
FRONT_ENDS = {
    "vlprompt/check_data.py", "vlprompt/commands.py", "vlprompt/demo.py", "vlprompt/errors.py",
    "vlprompt/interpret.py", "vlprompt/last_epoch.py", "vlprompt/results/cli.py", "vlprompt/results/parse.py",
    "vlprompt/toyworld/__main__.py",
}


def normalized_run_log(text: str, places: dict[str, str]) -> str:
    """A run's log with its folders named by placeholder and what varies between machines and runs masked:
    times, hashes, the yacs dump (its keys grow with every method; checked against ``str(cfg)`` apart) and
    the system description."""
    for path, name in sorted(places.items(), key=lambda item: -len(item[0])):
        text = text.replace(path, name)
    text = re.sub(r"(\*\* Config \*\*\n\*+\n).*?\n(Collecting env info \.\.\.\n)", r"\1<config>\n\2", text,
                  flags=re.DOTALL)
    text = re.sub(r"(\*\* System info \*\*\n).*?\n\n", r"\1<system info>\n\n", text, flags=re.DOTALL)
    text = re.sub(r"time [\d.]+ \([\d.]+\) data [\d.]+ \([\d.]+\)", "time <t> (<t>) data <t> (<t>)", text)
    text = re.sub(r"eta \d+:\d\d:\d\d", "eta <eta>", text)
    text = re.sub(r"Elapsed: \d+:\d\d:\d\d", "Elapsed: <elapsed>", text)
    text = re.sub(r"\b[0-9a-f]{12,64}\b", "<hash>", text)
    return text.replace("Initialize tensorboard (log_dir=<OUT>/tensorboard)\n", "")  # only where it is installed


def coop_log_args(root: Path, out: Path, clip: str) -> list[str]:
    """A two-epoch CoOp run that prints every kind of Dassl line (training, checkpoint, per-class result)."""
    return train_args(
        str(root), out, "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "1",
        "MODEL.BACKBONE.NAME", clip, "OPTIM.MAX_EPOCH", "2", "DATASET.NUM_SHOTS", "2",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.PREC", "fp32",
        "TEST.PER_CLASS_RESULT", "True", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20",
        "TRAIN.PRINT_FREQ", "2",
    )


def test_a_coop_runs_log_lines_are_those_of_before_and_the_console_shows_the_same(tiny_vit, tmp_path, capsys):
    """The stored expectation is this run's log.txt as the code printed it before it logged (commit 4570ac2)."""
    from vlprompt.cli import env_info, main
    from vlprompt.synthetic_data import write_oxford_pets

    root = tmp_path / "data"  # a private tree: its few-shot cache is written by this run, as in the expectation
    write_oxford_pets(root)
    out = tmp_path / "out"
    trainer = main(coop_log_args(root, out, tiny_vit))
    printed = capsys.readouterr().out
    log = (out / "log.txt").read_text()

    assert printed == "Setting fixed seed: 1\n" + log  # the seed line comes before the log file exists
    assert f"** Config **\n************\n{trainer.cfg}\nCollecting env info ...\n" in log
    assert f"** System info **\n{env_info()}\n\n" in log
    places = {str(out): "<OUT>", str(root): "<DATA>", tiny_vit: "<CLIP>", str(REPO_ROOT): "<REPO>"}
    assert normalized_run_log(log, places) == EXPECTED_COOP_LOG.read_text()


def test_the_library_prints_nothing_until_logging_is_configured(tmp_path):
    """Imported into a notebook or a script, the library keeps its info lines to itself (Python's default:
    warnings still reach stderr); ``setup_console_logging`` shows them as train.py does."""
    code = (
        "import logging, sys, torch\n"
        "from vlprompt.engine.checkpoint import save_checkpoint\n"
        "from vlprompt.engine.logging import setup_console_logging\n"
        "state = {'state_dict': {'ctx': torch.ones(1)}, 'epoch': 1, 'optimizer': None, 'scheduler': None}\n"
        "save_checkpoint(state, sys.argv[1])\n"
        "logging.getLogger('vlprompt.example').warning('a warning')\n"
        "setup_console_logging()\n"
        "save_checkpoint(dict(state, epoch=2), sys.argv[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, check=True)
    assert proc.stdout == f"Checkpoint saved to {tmp_path / 'model.pth.tar-2'}\n"
    assert proc.stderr == "a warning\n"


def test_a_level_given_to_the_vlprompt_logger_outlives_the_run_setup():
    """From Python, ``logging.getLogger("vlprompt").setLevel(logging.WARNING)`` quiets the runs it starts
    (each run calls setup_console_logging); a logger nobody set gets INFO, train.py's lines."""
    from vlprompt.engine.logging import setup_console_logging

    logger = logging.getLogger("vlprompt")
    try:
        logger.setLevel(logging.WARNING)
        setup_console_logging()
        assert logger.level == logging.WARNING
        logger.setLevel(logging.NOTSET)
        setup_console_logging()
        assert logger.level == logging.INFO
    finally:
        logger.setLevel(logging.INFO)


@contextlib.contextmanager
def run_log(folder: Path) -> Iterator[Path]:
    """The console teed into ``folder/log.txt`` meanwhile, as during a run; yields the file."""
    path = setup_logger(str(folder))
    try:
        yield Path(path)
    finally:
        teardown_logger()


@pytest.mark.parametrize("quieting, in_file", [
    (quiet_console, "an info line\nWarning: a warning\nwhile a bar is drawn\nloud again\n"),  # console only
    (muted, "Warning: a warning\nloud again\n"),  # dropped everywhere
])
def test_quieting_hides_info_lines_but_never_warnings(tmp_path, capsys, quieting, in_file):
    from vlprompt.engine.progress import _BarAwareStdout

    log = logging.getLogger("vlprompt.example")
    with run_log(tmp_path) as path:
        with quieting():
            log.info("an info line")
            log.warning("a warning")
            sys.stdout = _BarAwareStdout(sys.stdout, bar=None)  # behind a progress bar the tee is still found
            try:
                log.info("while a bar is drawn")
            finally:
                sys.stdout = sys.stdout.stream
        log.info("loud again")
    assert capsys.readouterr().out == "Warning: a warning\nloud again\n"
    assert path.read_text() == in_file


@pytest.mark.parametrize("quiet", [False, True])
def test_a_failed_log_write_raises_at_the_line_logged(tmp_path, monkeypatch, capsys, quiet):
    """As print() did: the run stops with one error naming log.txt, not logging's '--- Logging error ---'
    and carrying on (also for lines that go to the file only, under quiet_console)."""
    real_open = open

    class FullAfterFirstLine:
        def __init__(self, handle) -> None:
            self.handle, self.lines = handle, 0

        def write(self, text: str) -> int:
            if self.lines:
                raise OSError(28, "No space left on device")
            self.lines += 1
            return self.handle.write(text)

        def __getattr__(self, name: str):
            return getattr(self.handle, name)

    monkeypatch.setattr(engine_logging, "open", lambda *a, **k: FullAfterFirstLine(real_open(*a, **k)),
                        raising=False)
    log = logging.getLogger("vlprompt.example")
    with run_log(tmp_path) as path, quiet_console(logging.WARNING if quiet else logging.NOTSET):
        log.info("first")
        with pytest.raises(UserOSError, match=f"no space left writing {re.escape(str(path))}; the lines printed"):
            log.info("second")
        log.info("third")  # reported once; later lines still reach the console
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err
    assert captured.out == ("" if quiet else "first\nsecond\nthird\n")
    assert path.read_text() == "first\n"


def test_the_demo_shows_one_line_per_run_while_log_txt_holds_everything(tmp_path, capsys):
    from vlprompt import demo
    from vlprompt.toyworld import write_toyworld

    write_toyworld(tmp_path / "data", names=["ToyWorld"], train_per_class=1, val_per_class=1, test_per_class=2)
    ctx = demo.DemoContext(tmp_path / "data", tmp_path)
    out = ctx.output_dir("zeroshot", "ToyWorld")
    run = ctx.train("ZeroshotCLIP", "ToyWorld", demo.ZERO_SHOT_CFG, out, flags=("--eval-only",))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"  ZeroshotCLIP on ToyWorld (all classes): accuracy "
                                                       f"{run.accuracy:.1f}% ")
    log = (out / "log.txt").read_text()
    assert "Loading trainer: ZeroshotCLIP\n" in log and f"* accuracy: {run.accuracy:.1f}%\n" in log


def test_library_code_does_not_print():
    """Library messages are log records (routed, silenced and filed by the caller); only the command front
    ends print their product."""
    printing = []
    for path in sorted((REPO_ROOT / "vlprompt").rglob("*.py")):
        name = path.relative_to(REPO_ROOT).as_posix()
        if name in FRONT_ENDS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), name)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{name}:{node.lineno}")
    assert printing == []
