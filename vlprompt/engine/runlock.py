"""One run per output folder: a lock file naming the process that holds it.

``OUTPUT_DIR/.vlprompt.lock`` holds the pid, host, start time and command of the run writing into the
folder. A second run is refused with a message naming them; a lock whose process is gone (same host,
pid no longer running) is stale and taken over with a warning. Where the file system supports it the
lock file is also ``flock``-ed, which makes the take-over race-free and ends with the process.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import os.path as osp
import socket
import sys

from vlprompt.errors import UserError

try:
    import fcntl
except ImportError:  # not on Windows: the pid check alone decides
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "OutputDirLockedError", "RunLock", "acquire_run_lock", "pid_alive"]

LOCK_FILE = ".vlprompt.lock"
log = logging.getLogger(__name__)


class OutputDirLockedError(UserError, RuntimeError):
    """Another run is writing into the same output folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _try_flock(fd: int) -> bool | None:
    """True if we now hold an exclusive flock on ``fd``, False if another process holds one, None when
    the file system cannot lock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _read_holder(fd: int) -> dict:
    try:
        data = os.pread(fd, 1 << 16, 0)
        holder = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another run"
    parts = [f"pid {holder.get('pid')}"]
    if holder.get("host") and holder.get("host") != socket.gethostname():
        parts.append(f"on host {holder['host']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    text = "a run (" + ", ".join(parts) + ")"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


class RunLock:
    """A held output-folder lock; :meth:`release` removes the file (only if it is still ours)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if _read_holder(self.fd).get("pid") == os.getpid() and _same_file(self.path, self.fd):
                os.remove(self.path)  # before closing: the flock guards the file until it is gone
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return False


def _refuse(path: str, directory: str, holder: dict) -> OutputDirLockedError:
    other_host = holder.get("host") and holder.get("host") != socket.gethostname()
    advice = "wait for it to finish, or pass another --output-dir"
    if other_host:
        advice = f"if it is no longer running (another host's process cannot be checked from here), delete {path}"
    return OutputDirLockedError(
        f"{directory} is in use by {_describe(holder)} (lock file {path}); two runs in one output folder "
        f"would overwrite each other's checkpoints and logs: {advice}"
    )


def acquire_run_lock(directory: str) -> RunLock:
    """Take ``directory``'s lock for this process, or raise :class:`OutputDirLockedError` naming the
    run that holds it. A stale lock (its process is gone) is taken over with a warning."""
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, LOCK_FILE)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([osp.basename(sys.argv[0]) if sys.argv else "", *sys.argv[1:]]).strip(),
    }
    for _ in range(5):  # a lock released (file removed) between our open and flock: look again
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            created = True
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            created = False
        locked = _try_flock(fd)
        holder = _read_holder(fd)
        if locked is False:
            os.close(fd)
            raise _refuse(path, directory, holder)
        if not _same_file(path, fd):
            os.close(fd)
            continue
        if not created and holder:
            same_host = holder.get("host") == me["host"]
            pid = holder.get("pid")
            if not same_host or (isinstance(pid, int) and pid != me["pid"] and pid_alive(pid)):
                os.close(fd)
                raise _refuse(path, directory, holder)
            log.warning(f"{path} was left by {_describe(holder)}, which is no longer running; taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        return RunLock(path, fd)
    raise OutputDirLockedError(f"could not take the lock {path}: it keeps changing; is another run starting there?")
