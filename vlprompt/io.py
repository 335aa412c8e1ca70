"""File identity, the one atomic write, and safe reading: the helpers every part of vlprompt uses for
the files it writes and opens.

Nothing here runs code from a file. ``torch.save`` files (checkpoints, state dicts) load with
``torch.load(weights_only=True)``, plus an allow-list the caller gives (Dassl's pickled scheduler and
optimiser classes mapped to inert stand-ins). TorchScript archives (OpenAI's CLIP releases) are read
without ``torch.jit.load``: their pickled module tree is unpickled with module classes mapped to inert
holders and tensors rebuilt from the archive's storages, and the archive's ``code/`` folder is only
parsed (never run) to tell parameters and buffers from other attributes. That gives exactly the state
dict ``torch.jit.load(...).state_dict()`` gives. A file that needs code to be read is refused, unless
``VLPROMPT_TRUST_CHECKPOINTS=1`` asks for torch's full loaders on purpose.

Environment variables:
    VLPROMPT_TRUST_CHECKPOINTS   ``1``/``true``/``yes``: a file the safe readers refuse is loaded with full
                                 pickle (``torch.load(weights_only=False)``) or ``torch.jit.load``
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import pickle
import re
import secrets
import struct
import sys
import tarfile
import types
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from io import BytesIO
from typing import Any, BinaryIO

import torch

from vlprompt.errors import UserError, UserFileNotFoundError, write_error

__all__ = [
    "TEMP_FILE_PATTERN",
    "TRUST_ENV_VAR",
    "CheckpointError",
    "NotACheckpointError",
    "UnsafeCheckpointError",
    "atomic_copy",
    "atomic_save",
    "atomic_target",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "is_torchscript_archive",
    "load_torch_file",
    "load_weights_file",
    "read_torchscript_state_dict",
    "strip_module_prefix",
    "trust_requested",
]

log = logging.getLogger(__name__)

# Setting this to 1/true/yes lets a file the safe readers refuse be loaded with torch's full loaders.
TRUST_ENV_VAR = "VLPROMPT_TRUST_CHECKPOINTS"

_ZIP_MAGIC = b"PK\x03\x04"
_DAMAGED_FILE_MARKERS = ("PytorchStreamReader", "zip archive", "unexpected EOF", "corrupt")
_PICKLE_PROTO_OPCODE = 0x80
_JIT_DEPRECATION = r"`?torch\.jit\.\w+`? is deprecated"
# Python 2 module names a protocol-2 pickle may use, as Python 3's own unpickler maps them.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

# (object, name-in-the-pickle) pairs: each name read from a file is replaced by the given object.
AllowedGlobals = Iterable[tuple[Callable, str]]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weights file that cannot be loaded as asked; the message names the file and the fix."""


class NotACheckpointError(CheckpointError):
    """The file is empty, truncated, or not something ``torch.save``/``torch.jit.save`` wrote."""


class UnsafeCheckpointError(CheckpointError):
    """The file references Python globals or archive code that could run when it is loaded."""


# ------------------------------------------------------------------------------------------ file identity
@lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes; computed once per process for an unchanged file (keyed by
    its real path, size and modification time), so fingerprints and records can ask for it freely."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    return _sha256_of(real, stat.st_size, stat.st_mtime_ns)


# ---------------------------------------------------------------------------------------- atomic writes
# The hidden temporary files of :func:`atomic_target`: ".<final name>.<pid>.<8 hex>.tmp".
TEMP_FILE_PATTERN = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _fsync_directory(directory: str) -> None:
    """Make a rename durable; best effort because some platforms cannot open directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[str]:
    """A temporary path beside ``path`` for the body to write; when the body returns, that file is
    fsynced and renamed over ``path`` (then the folder is fsynced), so ``path`` holds either its old
    content or the complete new one. On any error the temporary file is removed and ``path`` is unchanged.

    The one atomic write of vlprompt: checkpoints, records, splits, downloads and generated weights all
    go through it (or :func:`atomic_write`). The temporary name is hidden (globs such as
    ``model.pth.tar-*`` never see it), unique (parallel writers do not collide) and carries the pid, so a
    resume can tell a dead writer's leftovers from a live one's (:data:`TEMP_FILE_PATTERN`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise
    _fsync_directory(directory)


class _RecordingWriter:
    """Passes writes through to a file and remembers the first OSError: torch.save reports a failed
    write as its own RuntimeError ("unexpected pos ..."), which would hide that the disk was full."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Run ``write`` on a binary handle of a temporary file and put it in place atomically (:func:`atomic_target`).

    A failed write (disk full, I/O error) raises :class:`~vlprompt.errors.UserOSError` naming ``path``
    and saying that the previous file is unchanged.
    """
    path = os.fspath(path)
    recorder = None
    try:
        with atomic_target(path) as tmp_path:
            # os.open with 0o666 lets the umask set the mode, as a plain open() would.
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as handle:
                recorder = _RecordingWriter(handle)
                write(recorder)  # type: ignore[arg-type]
    except BaseException as err:
        cause = err if isinstance(err, OSError) else (recorder.error if recorder is not None else None)
        if cause is not None and isinstance(err, Exception):
            raise write_error(cause, path, "any previous file there is unchanged") from err
        if isinstance(err, Exception) and hasattr(err, "add_note"):  # Python >= 3.11
            err.add_note(f"while writing {path}; any previous file there is unchanged")
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one, never a torn one."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (temporary file, fsync, rename)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the file ``src`` to ``dst`` atomically."""
    def copy(handle: BinaryIO) -> None:
        with open(src, "rb") as source:
            while chunk := source.read(1 << 20):
                handle.write(chunk)

    atomic_write(dst, copy)


def strip_module_prefix(state_dict: Mapping[str, Any]) -> OrderedDict:
    """``state_dict`` with the ``module.`` prefix that (Distributed)DataParallel adds removed from its keys
    (checkpoints store bare names; every reader of a state dict goes through this)."""
    return OrderedDict((str(k).removeprefix("module."), v) for k, v in state_dict.items())


# ---------------------------------------------------------------------------------------------- common
def trust_requested() -> bool:
    """Whether ``VLPROMPT_TRUST_CHECKPOINTS`` asks for torch's full (code-running) loaders as a fallback."""
    return os.environ.get(TRUST_ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def _brief(err: BaseException) -> str:
    """First sentence of an error, with its type: torch's zip errors run on for several lines."""
    text = str(err).strip().split("\n")[0]
    text = text.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_is_file(fpath: str, example: str) -> None:
    """A clear error for a missing path or a folder, before any reader sees it."""
    if not os.path.exists(fpath):
        raise UserFileNotFoundError(f'Checkpoint file is not found at "{fpath}"')
    if os.path.isdir(fpath):
        raise NotACheckpointError(f'"{fpath}" is a directory, not a checkpoint file; pass a file such as {example}')


def _check_looks_like_checkpoint(fpath: str) -> None:
    """Refuse, with a clear message, files that are empty or neither a zip archive nor a pickle."""
    with open(fpath, "rb") as handle:
        head = handle.read(8)
    if not head:
        raise NotACheckpointError(
            f'"{fpath}" is empty (0 bytes), not a PyTorch checkpoint; it may be left from an interrupted copy'
        )
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO_OPCODE:
        return
    if tarfile.is_tarfile(fpath):  # torch's oldest (pre-1.0) format
        return
    raise NotACheckpointError(
        f'"{fpath}" is not a PyTorch checkpoint: it starts with {head!r}, '
        "not with a torch.save zip archive or pickle"
    )


# ------------------------------------------------------------------------------ torch.save files (pickle)
def _torch_version() -> tuple[int, int]:
    major, minor = re.findall(r"\d+", torch.__version__)[:2]
    return int(major), int(minor)


# torch 2.6 lets safe_globals map a pickled name to another object; older torch gets a restricted unpickler.
_GLOBAL_ALIASES_SUPPORTED = _torch_version() >= (2, 6)


def _offending_globals(fpath: str, message: str, allowed: list[tuple[Callable, str]]) -> list[str]:
    """Names of the globals the safe loader refused: from the file itself, else from the error message."""
    names: list[str] = []
    if _GLOBAL_ALIASES_SUPPORTED:
        try:
            with torch.serialization.safe_globals(allowed):
                names = torch.serialization.get_unsafe_globals_in_checkpoint(fpath)
        except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError):
            names = []  # legacy (non-zip) files cannot be scanned; fall back to the message
    if names:
        return sorted(names)
    patterns = (r"GLOBAL (\S+) was not an allowed global", r"unsupported GLOBAL (\S+) whose module")
    return [match.group(1) for pattern in patterns for match in re.finditer(pattern, message)]


def _unpickler_reason(message: str) -> str:
    """The unpickler's own complaint, without the advice torch wraps around it."""
    match = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", message, re.DOTALL)
    reason = match.group(1) if match and match.group(1) else message.strip().split("\n")[0]
    return " ".join(reason.split())


def _restricted_pickle_module(allowed: list[tuple[Callable, str]]) -> types.ModuleType:
    """For torch < 2.6, which cannot alias pickled names: torch's weights_only allow-list + ``allowed``."""
    aliases = {alias: obj for obj, alias in allowed}

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            module = _PY2_MODULES.get(module, module)
            path = f"{module}.{name}"
            permitted = {**torch._weights_only_unpickler._get_allowed_globals(), **aliases}
            if path in permitted:
                return permitted[path]
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {path} was not an allowed global by default.")

    module = types.ModuleType("vlprompt_restricted_pickle")
    module.Unpickler = RestrictedUnpickler
    module.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()
    return module


def _safe_load(fpath: str, map_location: Any, allowed: list[tuple[Callable, str]]) -> Any:
    """``torch.load`` that cannot run code from the file: weights_only, with ``allowed`` as stand-ins."""
    if _GLOBAL_ALIASES_SUPPORTED:
        with torch.serialization.safe_globals(allowed):
            return torch.load(fpath, map_location=map_location, weights_only=True)
    try:
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not allowed:
            raise
        # Only files with allow-listed globals get here; the restricted unpickler knows nothing that runs code.
        return torch.load(
            fpath, map_location=map_location, pickle_module=_restricted_pickle_module(allowed), weights_only=False
        )


def _load_trusted(fpath: str, map_location: Any, reason: str) -> Any:
    warnings.warn(
        f'Loading "{fpath}" with full pickle (weights_only=False) because {TRUST_ENV_VAR}=1 is set: '
        f"{reason}. "
        "This runs any code the file contains; do it only for files you trust.",
        UserWarning,
        stacklevel=4,
    )
    return torch.load(fpath, map_location=map_location, weights_only=False)


def load_torch_file(
    fpath: str | os.PathLike, map_location: Any = "cpu", allowed_globals: AllowedGlobals = (),
    example: str = "model.pth.tar-<epoch>",
) -> Any:
    """What ``torch.save`` wrote to ``fpath``, loaded without running code from it.

    ``torch.load(weights_only=True)``, with each ``(object, "module.Name")`` of ``allowed_globals``
    standing in for that name. Anything else the file references raises :class:`UnsafeCheckpointError`
    unless ``VLPROMPT_TRUST_CHECKPOINTS=1``; empty, torn and foreign files raise :class:`NotACheckpointError`
    (``example`` names the kind of file expected). TorchScript archives are refused here: they hold a whole
    program, read them with :func:`load_weights_file`.
    """
    if fpath is None:
        raise ValueError("File path is None")
    fpath = os.fspath(fpath)
    _check_is_file(fpath, example)
    _check_looks_like_checkpoint(fpath)
    if is_torchscript_archive(fpath):
        raise NotACheckpointError(
            f'"{fpath}" is a TorchScript archive (a saved model program), not a checkpoint of tensors; '
            f"CLIP weights in that format go to MODEL.BACKBONE.NAME, prompt checkpoints are written by train.py"
        )
    allowed = list(allowed_globals)
    try:
        return _safe_load(fpath, map_location, allowed)
    except pickle.UnpicklingError as err:
        message = str(err)
        offenders = _offending_globals(fpath, message, allowed)
        if trust_requested():
            reason = f"it references {', '.join(offenders)}" if offenders else _unpickler_reason(message)
            return _load_trusted(fpath, map_location, reason)
        if offenders:
            known = "; it is not one of the optimiser/scheduler classes Dassl checkpoints contain" if allowed else ""
            raise UnsafeCheckpointError(
                f'Refusing to load "{fpath}": it references {", ".join(offenders)}, which could run code '
                f"when unpickled{known}. "
                f"If you trust this file, set {TRUST_ENV_VAR}=1 to load it unsafely on purpose."
            ) from None
        raise CheckpointError(
            f'"{fpath}" could not be read by the safe (weights_only) loader: {_unpickler_reason(message)}. '
            f"If you trust this file, set {TRUST_ENV_VAR}=1 to load it unsafely on purpose."
        ) from None
    except PermissionError:
        raise
    except (EOFError, OSError, ValueError, struct.error) as err:
        raise NotACheckpointError(
            f'"{fpath}" is not a readable PyTorch checkpoint (truncated or corrupt?): {_brief(err)}'
        ) from err
    except RuntimeError as err:
        # The readers report a torn or damaged file as RuntimeError ("PytorchStreamReader failed ...",
        # "unexpected EOF ..."); other RuntimeErrors (e.g. a CUDA map_location on a CPU machine) are
        # not about the file and pass through unchanged.
        if any(marker in str(err) for marker in _DAMAGED_FILE_MARKERS):
            raise NotACheckpointError(
                f'"{fpath}" is not a readable PyTorch checkpoint (truncated or corrupt?): {_brief(err)}'
            ) from err
        raise


# ------------------------------------------------------------------------------- TorchScript archives
# Storage classes a TorchScript pickle names -> the dtype of their elements.
_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}


def _same_value(value: Any, *type_tags: Any) -> Any:
    """``torch.jit._pickle``'s list builders and type tags: they only annotate the value they wrap."""
    return value


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip written by ``torch.jit.save`` (it has ``constants.pkl``, as torch checks)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


class _ScriptObject:
    """Inert holder for an object of a TorchScript class: its attributes, none of its code."""

    qualified_name = ""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    @property
    def attributes(self) -> dict:
        state = self.__dict__.get("state")
        return state if isinstance(state, dict) else {}


class _StorageType:
    """What ``torch.FloatStorage`` and its kin unpickle as: a dtype, nothing callable."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _ClassInfo:
    """What a class's serialized source says: its parameters and buffers, and whether it is a module."""

    def __init__(self, parameters: list[str], buffers: list[str], is_module: bool) -> None:
        self.parameters = parameters
        self.buffers = buffers
        self.is_module = is_module


class _ArchiveReader:
    """One TorchScript zip archive, read with Python's zipfile; nothing in it is executed."""

    def __init__(self, path: str, archive: zipfile.ZipFile) -> None:
        self.path = path
        self.archive = archive
        names = archive.namelist()
        if not names:
            raise NotACheckpointError(f'"{path}" is an empty zip archive, not CLIP weights')
        # torch names every record "<archive name>/<record>"; the first entry gives the archive name.
        self.prefix = names[0].split("/", 1)[0]
        self.names = set(names)
        self.storages: dict[str, torch.Tensor] = {}
        self.objects: list[_ScriptObject] = []
        self.holders: dict[str, type] = {}
        self.classes: dict[str, _ClassInfo] = {}

    def record(self, name: str) -> bytes:
        full = f"{self.prefix}/{name}"
        if full not in self.names:
            raise NotACheckpointError(f'"{self.path}" is not a complete TorchScript archive: it has no {name}')
        return self.archive.read(full)

    # ----------------------------------------------------------------------------- the pickled tree
    def unpickle(self) -> Any:
        reader = self

        class ArchiveUnpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                return reader.find_class(module, name)

            def persistent_load(self, pid: Any) -> Any:
                return reader.load_storage(pid)

        data = self.record("data.pkl")
        return ArchiveUnpickler(BytesIO(data)).load()

    def find_class(self, module: str, name: str) -> Any:
        """The safe stand-in for every global torch's own TorchScript unpickler accepts; others refused."""
        module = _PY2_MODULES.get(module, module)
        if module == "__torch__" or module.startswith("__torch__."):
            if module.startswith("__torch__.torch.classes"):
                raise self.refusal(f"it holds an object of the C++ class {module}.{name}")
            return self.holder(f"{module}.{name}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self.rebuild_tensor
        if module == "torch.jit._pickle" and name in (
            "build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"
        ):
            return _same_value
        if module == "collections" and name == "OrderedDict":
            return OrderedDict  # a tensor's (always empty) backward hooks
        if module == "builtins" and name == "complex":
            return complex
        if module == "torch" and name == "device":
            return torch.device
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise self.refusal(f"its pickle references {module}.{name}, which a TorchScript CLIP archive never does")

    def holder(self, qualified_name: str) -> type:
        if qualified_name not in self.holders:
            reader = self

            class Holder(_ScriptObject):
                def __new__(cls, *args: Any) -> _ScriptObject:
                    instance = object.__new__(cls)
                    reader.objects.append(instance)
                    return instance

            Holder.qualified_name = qualified_name
            Holder.__name__ = Holder.__qualname__ = qualified_name.rsplit(".", 1)[-1]
            self.holders[qualified_name] = Holder
        return self.holders[qualified_name]

    def load_storage(self, pid: Any) -> torch.Tensor:
        """The flat tensor of one storage record, ``("storage", type, key, location, numel)``; read on the
        CPU whatever device the archive was saved from (as ``torch.jit.load(map_location="cpu")``)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise NotACheckpointError(f'"{self.path}" has a malformed tensor reference {pid!r} in data.pkl')
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            dtype = storage_type.dtype
            if numel <= 0:
                self.storages[key] = torch.empty(0, dtype=dtype)
            else:
                nbytes = numel * torch.empty(0, dtype=dtype).element_size()
                data = bytearray(self.record(f"data/{key}"))
                if len(data) < nbytes:
                    raise NotACheckpointError(
                        f'"{self.path}" is truncated or corrupt: tensor storage data/{key} has {len(data)} bytes, '
                        f"{nbytes} expected"
                    )
                self.storages[key] = torch.frombuffer(data, dtype=dtype, count=numel)
        return self.storages[key]

    def rebuild_tensor(self, storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
        """``torch._utils._rebuild_tensor_v2`` over a storage from this archive (autograd flags dropped,
        as ``state_dict()`` returns detached tensors)."""
        if not (isinstance(storage, torch.Tensor) and isinstance(offset, int)
                and isinstance(size, tuple) and isinstance(stride, tuple)):
            raise NotACheckpointError(f'"{self.path}" has a malformed tensor in data.pkl')
        try:
            return torch.as_strided(storage, size, stride, offset)
        except (RuntimeError, TypeError) as err:
            raise NotACheckpointError(
                f'"{self.path}" is corrupt: a tensor of size {size} does not fit its storage ({_brief(err)})'
            ) from err

    # ------------------------------------------------------------------------------- class sources
    def class_info(self, qualified_name: str) -> _ClassInfo:
        """Parse (never run) ``code/<module path>.py`` for the class: the lines torch itself reads."""
        if qualified_name in self.classes:
            return self.classes[qualified_name]
        module, name = qualified_name.rsplit(".", 1)
        source_name = "code/" + module.replace(".", "/") + ".py"
        try:
            source = self.record(source_name).decode("utf-8")
        except NotACheckpointError:
            raise self.refusal(f"it has no source for its class {qualified_name}") from None
        body = _class_body(source, name)
        if body is None:
            raise self.refusal(f"{source_name} does not define its class {qualified_name}")
        header, lines = body
        lists = {}
        for key in ("__parameters__", "__buffers__"):
            try:
                lists[key] = _name_list(lines, key)
            except (ValueError, SyntaxError, TypeError):
                raise NotACheckpointError(
                    f'"{self.path}": {source_name} has an unreadable {key} list for {name}'
                ) from None
        info = _ClassInfo(lists["__parameters__"], lists["__buffers__"], header.endswith("(Module):"))
        self.classes[qualified_name] = info
        return info

    def refusal(self, reason: str) -> UnsafeCheckpointError:
        error = UnsafeCheckpointError(
            f'Refusing to read the TorchScript archive "{self.path}": {reason}. Reading it would need '
            f"torch.jit.load, which runs code stored in the archive; OpenAI's CLIP files need none. If you "
            f"trust this file, set {TRUST_ENV_VAR}=1 to load it with torch.jit.load on purpose, or pass a "
            f"state dict saved with torch.save(model.state_dict(), path)."
        )
        error.reason = reason
        return error

    # ---------------------------------------------------------------------------------- state dict
    def state_dict(self) -> OrderedDict[str, torch.Tensor]:
        version = self.record("version").decode("ascii", "replace").strip() if self._has("version") else "?"
        if not self._has("data.pkl"):
            raise self.refusal(f"it is in an old TorchScript format (version {version}) without data.pkl")
        if self._has("byteorder") and self.record("byteorder").decode("ascii", "replace").strip() != sys.byteorder:
            raise NotACheckpointError(
                f'"{self.path}" was written on a machine of the other byte order; load it there and save '
                f"its state dict with torch.save(model.state_dict(), path)"
            )
        # torch.jit.load runs a class's __setstate__ on every object of it it rebuilds. Any mention in any
        # source file refuses the archive: no spelling of the method can slip past, and CLIP files have none.
        sources = [name for name in sorted(self.names) if name.startswith(f"{self.prefix}/code/") and name.endswith(".py")]
        for name in sources:
            if b"__setstate__" in self.archive.read(name):
                code = name.split("/", 1)[1]
                raise self.refusal(f"{code} defines __setstate__, code torch.jit.load runs while loading")
        root = self.unpickle()
        for obj in self.objects:  # every object, reachable by the state dict or not, as torch.jit.load builds them all
            self.class_info(obj.qualified_name)
            if not isinstance(obj.__dict__.get("state"), dict):
                raise self.refusal(f"its object of class {obj.qualified_name} has no plain attributes")
        if not isinstance(root, _ScriptObject) or not self.class_info(root.qualified_name).is_module:
            raise NotACheckpointError(f'"{self.path}" is a TorchScript archive that holds no module')
        state: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._collect(root, "", state, set())
        return state

    def _has(self, name: str) -> bool:
        return f"{self.prefix}/{name}" in self.names

    def _collect(self, module: _ScriptObject, prefix: str, out: OrderedDict, seen: set[int]) -> None:
        """``nn.Module.state_dict``'s order: a module's parameters, then its buffers, then each submodule."""
        if id(module) in seen:
            return
        seen.add(id(module))
        info = self.class_info(module.qualified_name)
        attributes = module.attributes
        for names in (info.parameters, info.buffers):
            for name, value in attributes.items():
                if name in names and isinstance(value, torch.Tensor):
                    out[prefix + name] = value
        for name, value in attributes.items():
            if isinstance(value, _ScriptObject) and self.class_info(value.qualified_name).is_module:
                self._collect(value, f"{prefix}{name}.", out, seen)


def _class_body(source: str, name: str) -> tuple[str, list[str]] | None:
    """The header line and body lines of top-level ``class <name>`` in TorchScript's printed source."""
    lines = source.splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"class {re.escape(name)}\s*[(:]", line):
            body = []
            for following in lines[index + 1:]:
                if following and not following[0].isspace():
                    break
                body.append(following)
            return line.rstrip(), body
    return None


def _name_list(lines: list[str], key: str) -> list[str]:
    """The literal list assigned to ``key`` in a class body (``__parameters__ = ["weight", "bias", ]``),
    read with ``ast.literal_eval``, which evaluates literals only; absent means empty, as torch reads it."""
    for index, line in enumerate(lines):
        if line.strip().startswith(f"{key} = "):
            text = line.split("=", 1)[1]
            for following in lines[index + 1:]:  # a long list may wrap
                if text.count("[") <= text.count("]"):
                    break
                text += following
            return [str(item) for item in ast.literal_eval(text.strip())]
    return []


def read_torchscript_state_dict(path: str | os.PathLike) -> OrderedDict[str, torch.Tensor]:
    """The state dict of the TorchScript archive at ``path``, on the CPU, exactly as
    ``torch.jit.load(path, map_location="cpu").state_dict()`` (same keys, order, dtypes and bits),
    without running anything stored in the archive.

    Archives that need their own code to be read (a class defining ``__setstate__``, globals TorchScript
    never writes) raise :class:`UnsafeCheckpointError`; with ``VLPROMPT_TRUST_CHECKPOINTS=1`` they are
    loaded with ``torch.jit.load`` instead, with a warning.
    """
    fpath = os.fspath(path)
    _check_is_file(fpath, "a CLIP .pt file")
    try:
        with zipfile.ZipFile(fpath) as archive:
            return _ArchiveReader(fpath, archive).state_dict()
    except UnsafeCheckpointError as err:
        if not trust_requested():
            raise
        reason = getattr(err, "reason", str(err))
        log.warning(
            'Loading "%s" with torch.jit.load because %s=1 is set: %s. This runs code stored in the archive; '
            "do it only for files you trust.", fpath, TRUST_ENV_VAR, reason,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
            return OrderedDict(torch.jit.load(fpath, map_location="cpu").state_dict())
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error, ValueError, TypeError,
            AttributeError, IndexError, KeyError, RecursionError, MemoryError) as err:
        raise NotACheckpointError(
            f'"{fpath}" is not a readable TorchScript archive (truncated or corrupt?): {_brief(err)}'
        ) from err


def load_weights_file(path: str | os.PathLike) -> Any:
    """A weights file of either format on the CPU, without running code: a TorchScript archive's state
    dict (:func:`read_torchscript_state_dict`) or what ``torch.save`` wrote (:func:`load_torch_file`)."""
    fpath = os.fspath(path)
    _check_is_file(fpath, "a CLIP .pt file")
    if is_torchscript_archive(fpath):
        return read_torchscript_state_dict(fpath)
    return load_torch_file(fpath, "cpu", example="a CLIP .pt file")
