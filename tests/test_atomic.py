"""The one atomic write (vlprompt.io): every writer goes through it, so every file is fsynced before it
appears under its name and a failed write leaves the old file."""

from __future__ import annotations

import os

import pytest

import vlprompt.io as vio
from vlprompt.tiny_clip import save_tiny_clip


def test_atomic_target_syncs_before_the_rename_and_cleans_up_on_error(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with vio.atomic_target(target) as temp:
        assert vio.TEMP_FILE_PATTERN.match(os.path.basename(temp))
        with open(temp, "wb") as handle:
            handle.write(b"new")
    assert target.read_bytes() == b"new"
    assert events[:2] == ["fsync", "replace"]  # the data is durable before the name points at it

    with pytest.raises(RuntimeError, match="mid-write"), vio.atomic_target(target) as temp:
        with open(temp, "wb") as handle:
            handle.write(b"torn")
        raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["file.bin"]


def test_engine_checkpoint_helpers_are_the_io_ones():
    from vlprompt.engine import checkpoint

    assert checkpoint.atomic_save is vio.atomic_save
    assert checkpoint.atomic_write_text is vio.atomic_write_text


def test_generated_weights_go_through_the_atomic_write(tmp_path, monkeypatch):
    targets = []
    real = vio.atomic_target

    def recording(path):
        targets.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr("vlprompt.tiny_clip.atomic_target", recording)
    path = save_tiny_clip(tmp_path / "tiny.pt", kind="vit")
    assert targets == [str(path)] and path.is_file()
    assert os.listdir(tmp_path) == ["tiny.pt"]
