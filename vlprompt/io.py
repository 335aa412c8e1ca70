"""File identity and safe reading: the helpers every part of vlprompt uses for the files it opens."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

__all__ = ["file_sha256"]


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
