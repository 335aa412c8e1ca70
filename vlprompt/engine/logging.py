"""Console tee into ``OUTPUT_DIR/log.txt`` and meters, with Dassl's file naming and line formats.

Library code reports through ``logging.getLogger(__name__)`` (children of the ``vlprompt`` logger), never
print. Left unconfigured (a notebook, a script importing vlprompt), those loggers follow Python's
defaults: info lines are dropped and warnings reach stderr. :func:`setup_console_logging` (called by
``train.py``, the ``vlprompt`` command and :func:`setup_logger`) prints them to the live ``sys.stdout``
as bare lines ("Warning: " before warnings), so a run's ``log.txt`` receives them through the tee,
byte for byte as Dassl's prints. :func:`quiet_console` and :func:`muted` turn them down for a while.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import NoReturn, TextIO

import torch

from vlprompt.errors import UserError, write_error

log = logging.getLogger(__name__)

# What a failed log write leaves intact (the log is line-buffered, so every line printed before it).
LOG_WRITE_INTACT = ("the lines printed before are in it and the checkpoints saved so far are intact; free some "
                    "space and run the same command again to resume")


class _Tee:
    """Writes everything printed to the console and to a log file (stdout only, as Dassl).

    The file is line-buffered, so a killed run's log holds every line printed so far. A failed write
    (disk full) raises once, naming the file; later lines still reach the console.
    """

    def __init__(self, console: TextIO, path: str) -> None:
        self.console = console
        self.path = path
        self.failed: OSError | None = None
        self.file = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the run

    def _fail(self, err: OSError) -> NoReturn:
        self.failed = write_error(err, self.path, LOG_WRITE_INTACT)
        raise self.failed from err

    def write(self, msg: str) -> int:
        self.console.write(msg)
        if self.failed is None and not self.file.closed:
            try:
                self.file.write(msg)
            except OSError as err:
                self._fail(err)
        return len(msg)

    def write_log(self, msg: str) -> None:
        """Write ``msg`` to the log file only (a line the console is not showing now)."""
        if self.failed is None and not self.file.closed:
            try:
                self.file.write(msg)
            except OSError as err:
                self._fail(err)

    def flush(self) -> None:
        self.console.flush()
        if self.failed is None and not self.file.closed:
            try:
                self.file.flush()
            except OSError as err:
                self._fail(err)

    def sync(self) -> None:
        """Flush the log and fsync it; raises the write error if any line could not be written."""
        if self.failed is not None:
            raise self.failed
        if self.file.closed:
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as err:
            self._fail(err)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.console.fileno()

    def close(self) -> None:
        if not self.file.closed:
            try:
                self.file.close()
            except OSError:
                pass  # a failed final flush: sync() is what reports it, before the run is marked complete


class _ConsoleHandler(logging.StreamHandler):
    """Writes records to whatever ``sys.stdout`` is when they are emitted, so they reach the run's log
    file through the tee exactly like the lines the engine prints."""

    # Records below this level skip the console (the run's log file still gets them): quiet_console().
    console_level = logging.NOTSET

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= self.console_level:
            super().emit(record)
            return
        write_log = getattr(sys.stdout, "write_log", None)  # the run's tee (also behind a progress bar)
        if write_log is not None:
            try:
                write_log(self.format(record) + self.terminator)
            except Exception:  # noqa: BLE001 - reported (or re-raised) as StreamHandler.emit does
                self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # A failed write to the run's log (disk full) is the user's to fix: raise it, as print() did,
        # instead of logging's "--- Logging error ---" traceback and carrying on.
        error = sys.exc_info()[1]
        if isinstance(error, UserError):
            raise error
        super().handleError(record)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler assigns it; the live sys.stdout wins
        pass


class _ConsoleFormatter(logging.Formatter):
    """Info lines as they are; warnings and errors prefixed with their level, as users read them."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname.capitalize()}: {message}"


def setup_console_logging(level: int | None = None) -> None:
    """Send the ``vlprompt`` loggers (library, trainers, datasets) to the console and log file; once.

    Without ``level``, a level the caller already gave the ``vlprompt`` logger is kept (e.g. WARNING to
    run quietly from Python), else INFO: every line train.py prints."""
    logger = logging.getLogger("vlprompt")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        logger.addHandler(handler)
    if level is not None or logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO if level is None else level)
    logger.propagate = False


@contextlib.contextmanager
def quiet_console(level: int = logging.WARNING) -> Iterator[None]:
    """Meanwhile the console shows only ``vlprompt`` records at ``level`` or above; a run's log file
    still gets every line (the demo's one-line-per-run output)."""
    saved = _ConsoleHandler.console_level
    _ConsoleHandler.console_level = level
    try:
        yield
    finally:
        _ConsoleHandler.console_level = saved


@contextlib.contextmanager
def muted(level: int = logging.WARNING, name: str = "vlprompt") -> Iterator[None]:
    """Meanwhile records of logger ``name`` below ``level`` are dropped everywhere, log file included
    (e.g. a helper model built for its state, whose announcements would repeat what the run said)."""
    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(saved)


def log_file_path(output: str) -> str:
    """Where a run logging into ``output`` writes: ``log.txt``, or a timestamped name if that exists."""
    if output.endswith((".txt", ".log")):
        path = output
    else:
        path = os.path.join(output, "log.txt")
    if os.path.exists(path):
        # Never overwrite an earlier run's log; Dassl appends the start time instead.
        path += time.strftime("-%Y-%m-%d-%H-%M-%S")
    return path


def setup_logger(output: str | None) -> str | None:
    """Tee ``sys.stdout`` into the run's log file; returns the file path (None when ``output`` is empty)."""
    if not output:
        return None
    path = log_file_path(output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    teardown_logger()
    sys.stdout = _Tee(sys.stdout, path)
    setup_console_logging()
    return path


def sync_log() -> None:
    """Make every line printed so far durable in the run's log file (flush and fsync), or raise
    :class:`~vlprompt.errors.UserOSError` naming it; called before a run is recorded as complete."""
    if isinstance(sys.stdout, _Tee):
        sys.stdout.sync()


def teardown_logger() -> None:
    """Close the log file and give ``sys.stdout`` back to the console (lets one process run many jobs)."""
    if isinstance(sys.stdout, _Tee):
        tee = sys.stdout
        sys.stdout = tee.console
        try:
            tee.flush()
        except OSError:
            pass  # already reported (or, on an error path, secondary to the error being reported)
        tee.close()


class AverageMeter:
    """Current value and running mean of one scalar."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float | torch.Tensor, n: int = 1) -> None:
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """Named AverageMeters printed as ``name val (avg)`` with 4 decimals, as Dassl's log lines."""

    def __init__(self, delimiter: str = " ") -> None:
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, values: dict | None) -> None:
        if values is None:
            return
        if not isinstance(values, dict):
            raise TypeError("MetricMeter.update() takes a dict of name -> value, e.g. {'loss': loss}")
        for name, value in values.items():
            self.meters[name].update(value)

    def __str__(self) -> str:
        return self.delimiter.join(f"{n} {m.val:.4f} ({m.avg:.4f})" for n, m in self.meters.items())


class TensorboardWriter:
    """SummaryWriter when tensorboard is installed, otherwise a no-op (it is optional here)."""

    def __init__(self, log_dir: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._writer = None
            return
        os.makedirs(log_dir, exist_ok=True)
        log.info(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def add_scalar(self, tag: str, value: float, step: int | None = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
