"""The evaluation progress bar: on terminals only (or VLPROMPT_PROGRESS=1), counted in images with rate and
ETA, never in stdout or log.txt, and printed lines unchanged while it is drawn."""

from __future__ import annotations

import io
import re
import sys

import pytest
from conftest import train_args
from tqdm import tqdm

from vlprompt.cli import main as train_main
from vlprompt.engine import progress
from vlprompt.engine.progress import PROGRESS_ENV, progress_enabled, track

BAR_TEXT = re.compile(r"img/s|s/img|\r|\d+%\|")


class EveryUpdate(tqdm):
    """The bar drawn at every update (tqdm otherwise waits 0.1 s between draws), so a test sees each count."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, mininterval=0, miniters=1, **kwargs)


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("value", "tty", "expected"), [
    (None, True, True), (None, False, False), ("0", True, False), ("1", False, True), ("off", True, False),
])
def test_bar_only_on_a_terminal_unless_the_variable_says(monkeypatch, value, tty, expected):
    if value is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)
    else:
        monkeypatch.setenv(PROGRESS_ENV, value)
    monkeypatch.setattr(sys, "stderr", Terminal() if tty else io.StringIO())
    assert progress_enabled() is expected


def test_without_a_bar_the_items_are_passed_through_untouched(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    items = [1, 2, 3]
    assert track(items, desc="test") is items


def test_printed_lines_stay_intact_while_the_bar_counts_images(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    monkeypatch.setattr(progress, "tqdm", EveryUpdate)
    stdout, stderr = io.StringIO(), Terminal()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    batches = [{"label": [0, 1, 2]}, {"label": [3, 4]}]
    for i, _ in enumerate(track(batches, desc="test", total=5)):
        print(f"line {i}")
    assert sys.stdout is stdout
    assert stdout.getvalue() == "line 0\nline 1\n"  # nothing of the bar
    assert re.search(r"test: 100%\|[^|]*\| 5/5 \[\d\d:\d\d<00:00, +[\d.?]+(img/s|s/img)\]", stderr.getvalue())


def test_stdout_is_given_back_when_the_loop_fails(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", Terminal())
    with pytest.raises(KeyboardInterrupt):
        for _ in track(range(3), desc="test", total=3, count=lambda item: 1):
            raise KeyboardInterrupt
    assert sys.stdout is stdout


def zeroshot_eval(pets_root: str, tiny_vit: str, out) -> list[str]:
    return train_args(pets_root, out, "ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml", "--eval-only",
                      "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "8")


def test_evaluation_bar_goes_to_the_terminal_only(pets_root, tiny_vit, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    plain = train_main(zeroshot_eval(pets_root, tiny_vit, tmp_path / "plain"))
    printed_plain = capsys.readouterr()
    assert not BAR_TEXT.search(printed_plain.err)  # stderr is not a terminal here: no bar at all

    monkeypatch.setenv(PROGRESS_ENV, "1")
    monkeypatch.setattr(progress, "tqdm", EveryUpdate)
    shown = train_main(zeroshot_eval(pets_root, tiny_vit, tmp_path / "shown"))
    printed = capsys.readouterr()
    assert re.search(r"test: +\d+%\|[^|]*\| 8/20 \[", printed.err)  # per image: 8 after the first batch
    assert re.search(r"test: 100%\|[^|]*\| 20/20 \[\d\d:\d\d<00:00, +[\d.?]+(img/s|s/img)\]", printed.err)
    assert shown.test_results == plain.test_results
    log = (tmp_path / "shown" / "log.txt").read_text()
    assert not BAR_TEXT.search(printed.out) and not BAR_TEXT.search(log)
    assert "Evaluate on the *test* set\n=> result\n* total: 20\n" in log
