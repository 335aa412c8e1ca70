"""A progress bar with rate and ETA for evaluation loops, drawn only where a person watches.

The bar (tqdm) goes to stderr, counts images, and is drawn only when stderr is a terminal, so redirected
output, ``log.txt`` and CI logs never see it. Lines printed while it is drawn (Dassl's and TPT's progress
lines) clear it first and redraw it after, so they read exactly as without it.

Environment variables:
    VLPROMPT_PROGRESS   ``0`` never draws the bar, ``1`` always does (even when stderr is not a terminal);
                        unset: only on a terminal
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from vlprompt.engine import distributed

PROGRESS_ENV = "VLPROMPT_PROGRESS"
T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether bars are drawn: ``VLPROMPT_PROGRESS`` 0/1 decides; unset, only when stderr is a terminal."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def batch_size(batch: Any) -> int:
    """The number of images in a loader batch (a Dassl batch dict, a tensor or a sequence)."""
    if isinstance(batch, dict):
        batch = batch.get("label", batch.get("index", batch.get("img")))
    try:
        return len(batch)
    except TypeError:
        return 1


class _BarAwareStdout:
    """Stands in for ``sys.stdout`` while a bar is drawn: each write clears the bar first and a finished
    line redraws it, so printed lines never mix with the bar on the terminal (and reach the log unchanged)."""

    def __init__(self, stream: TextIO, bar: tqdm) -> None:
        self.stream = stream
        self.bar = bar

    def write(self, text: str) -> int:
        self.bar.clear()
        written = self.stream.write(text)
        if text.endswith("\n"):
            self.stream.flush()
            self.bar.refresh()
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def track(items: Iterable[T], *, desc: str, total: int | None = None, count: Callable[[T], int] = batch_size,
          enabled: bool = True) -> Iterable[T]:
    """``items`` as they are, counted on a bar of ``total`` images (default: the size of a data loader's
    dataset); ``count(item)`` images are added once the loop body has finished with an item. Without a bar
    (see :func:`progress_enabled`; off on every process but the first under torchrun) ``items`` is returned
    untouched."""
    if not (enabled and progress_enabled() and distributed.is_main_process()):
        return items
    if total is None:
        try:
            total = len(items.dataset)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            total = None  # a bar without ETA
    return _tracked(items, total, desc, count)


def _tracked(items: Iterable[T], total: int | None, desc: str, count: Callable[[T], int]) -> Iterator[T]:
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True, file=sys.stderr)
    stdout = sys.stdout
    sys.stdout = _BarAwareStdout(stdout, bar)
    try:
        for item in items:
            yield item
            bar.update(count(item))
    finally:
        if isinstance(sys.stdout, _BarAwareStdout) and sys.stdout.bar is bar:
            sys.stdout = stdout
        bar.close()
