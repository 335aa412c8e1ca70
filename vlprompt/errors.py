"""Errors that come from the user's input or environment, and how the command line reports them.

A :class:`UserError` is a mistake in what was asked (a config key, a dataset tree, a weights file, a
checkpoint, an output folder, the command line). Its message already names the file, key or value
and the fix, so the command line prints that message alone, with no traceback; anything else is a
programming error and keeps its traceback. Error classes elsewhere in vlprompt mix ``UserError`` in
beside the built-in exception they have always been (``FileNotFoundError``, ``ValueError``, ...), so
existing ``except`` clauses keep working.

Environment variables:
    VLPROMPT_DEBUG   ``1`` shows the full traceback of user errors too
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

DEBUG_ENV = "VLPROMPT_DEBUG"
EXIT_USER_ERROR = 2  # argparse's code for a usage error
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

T = TypeVar("T")
log = logging.getLogger(__name__)


class UserError(Exception):
    """A mistake in the user's input or environment; ``str(error)`` says what is wrong and how to fix it."""


class UserValueError(UserError, ValueError):
    """A value the user gave (flag, config value, file content) that cannot be used."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user pointed to (or that a run needs) does not exist."""


class UserPermissionError(UserError, PermissionError):
    """A file or folder the user pointed to cannot be read or written."""


class UserKeyError(UserError, KeyError):
    """An unknown name (trainer, dataset, backbone, config key).

    ``KeyError`` would print its message in quotes; this one prints it as written.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsupportedSettingError(UserError, NotImplementedError):
    """A setting that exists (in Dassl, say) but that this engine does not implement; the message names
    what to use instead."""


class UsageError(UserError):
    """A command used the wrong way (arguments, combinations of flags)."""


class UserOSError(UserError, OSError):
    """A file the run needs could not be read or written (disk full, no permission, I/O error); the
    message names the file and says what is intact. ``errno`` and ``filename`` are kept for callers."""

    def __str__(self) -> str:
        return str(self.strerror if self.strerror is not None else super().__str__())


def write_error(err: OSError, path: str | os.PathLike, intact: str) -> UserOSError:
    """The one wording of a failed write: ``no space left writing PATH; INTACT`` (or the system's
    reason for other errors), keeping ``err``'s errno so callers can still tell disk-full apart.
    ``err`` may be an error this function made for an inner write: it is reworded, not nested."""
    path = os.fspath(path)
    reason = getattr(err, "reason", None) or err.strerror or str(err)
    what = f"no space left writing {path}" if err.errno == errno.ENOSPC else f"could not write {path} ({reason})"
    error = UserOSError(err.errno, f"{what}; {intact}" if intact else what, path)
    error.reason = reason
    return error


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_user_error(err: BaseException) -> bool:
    """True for mistakes in input or environment: :class:`UserError`, and operating-system errors
    (a missing file, no permission, a full disk) raised while reading or writing the user's files."""
    return isinstance(err, (UserError, OSError))


def describe(err: BaseException) -> str:
    """One line (or a short paragraph) for the user: the message, without Python's decoration."""
    if isinstance(err, OSError) and not isinstance(err, UserError):
        if err.errno == errno.ENOSPC:
            where = f" writing {err.filename}" if err.filename else ""
            return f"no space left on the device{where}: {err.strerror or err}; free some space and rerun"
        if err.filename and err.strerror:
            return err.strerror if str(err.filename) in err.strerror else f"{err.strerror}: {err.filename}"
    text = str(err).strip()
    notes = getattr(err, "__notes__", None) or []
    return "\n".join([text or type(err).__name__, *notes])


def run_cli(main: Callable[[], T], *, program: str, resume_hint: Callable[[], str | None] | None = None) -> T:
    """Call ``main`` the way a command line should: a user's mistake prints ``program: error: ...`` to
    stderr and exits 2; Ctrl-C prints one line saying where the run stopped and exits 130; programming
    errors keep their traceback. ``VLPROMPT_DEBUG=1`` re-raises everything as it is."""
    try:
        return main()
    except KeyboardInterrupt:
        if debug_requested():
            raise
        hint = resume_hint() if resume_hint is not None else None
        _exit(EXIT_INTERRUPTED, f"{program}: interrupted" + (f"; {hint}" if hint else ""))
    except SystemExit:
        raise
    except BaseException as err:
        if debug_requested() or not is_user_error(err):
            raise
        _exit(EXIT_USER_ERROR, f"{program}: error: {describe(err)}")


def _exit(code: int, message: str) -> NoReturn:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(message, file=sys.stderr)
    raise SystemExit(code)
