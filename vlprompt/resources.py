"""Files that ship with vlprompt: the reference config files (``configs/``).

An installed vlprompt carries them as package data (``vlprompt/configs/``, see setup.py); a source checkout
has them at the repository's top level. Code finds them here, never through the working directory, so the
demo and ``vlprompt train --config-file configs/...`` work from any folder.
"""

from __future__ import annotations

import difflib
import importlib.resources
import logging
from pathlib import Path

import vlprompt
from vlprompt.errors import UserFileNotFoundError

CONFIGS = "configs"  # the folder's name, in the checkout and inside the installed package
log = logging.getLogger(__name__)


def configs_dir() -> Path:
    """The shipped ``configs/`` folder: inside the installed package, else the checkout's top-level one."""
    installed = Path(str(importlib.resources.files("vlprompt").joinpath(CONFIGS)))
    if installed.is_dir():
        return installed
    checkout = Path(vlprompt.__file__).resolve().parent.parent / CONFIGS
    if checkout.is_dir():
        return checkout
    raise UserFileNotFoundError(
        f"vlprompt's config files are missing (looked for {installed} and {checkout}); reinstall vlprompt "
        "(pip install .) or run from a source checkout"
    )


def shipped_configs() -> list[str]:
    """Every shipped config file, relative to ``configs/`` (``trainers/CoOp/vit_b16.yaml``), sorted."""
    root = configs_dir()
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*.yaml"))


def shipped_config(relative: str, asked_as: str | None = None) -> Path:
    """``configs/<relative>`` of the shipped files; a name that is not shipped raises an error listing the
    closest shipped ones (``asked_as``: the path the user gave, looked for in the working directory first)."""
    path = configs_dir() / relative
    if path.is_file():
        return path
    close = difflib.get_close_matches(relative, shipped_configs(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(f'configs/{name}' for name in close)}?" if close else ""
    where = f"is neither in the working directory ({Path.cwd()}) nor" if asked_as else "is not"
    raise UserFileNotFoundError(
        f"config file not found: {asked_as or f'configs/{relative}'} {where} among vlprompt's shipped config files "
        f"({configs_dir()}){hint} (`vlprompt list configs` lists them all)"
    )


def resolve_config_path(path: str) -> str:
    """``path`` as given when it exists; a relative ``configs/...`` path that does not exist from the working
    directory becomes the shipped file of that name (a log line says so). Other paths are returned unchanged,
    so the config loader reports them as it always has."""
    if not path or Path(path).expanduser().exists():
        return path
    parts = Path(path).parts  # "./configs/x.yaml" -> ("configs", "x.yaml")
    if Path(path).is_absolute() or len(parts) < 2 or parts[0] != CONFIGS:
        return path
    shipped = str(shipped_config(Path(*parts[1:]).as_posix(), asked_as=path))
    log.info("%s is not in the working directory; using vlprompt's shipped copy %s", path, shipped)
    return shipped
