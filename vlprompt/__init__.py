"""vlprompt: prompt tuning for CLIP-like vision-language models, CoOp/Dassl compatible.

Importing the package makes the environment usable before anything touches torchvision or clip:
it installs the torchvision shim (CPU torch beside PyPI's CUDA torchvision) and, in a source
checkout, maps ``vlprompt.trainers`` / ``vlprompt.datasets`` onto the top-level ``trainers/`` and
``datasets/`` folders, which an install ships under those names (see setup.py).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

from vlprompt import _torchvision_shim

__version__ = "0.1.0"

_torchvision_shim.install()

# Folders of the repository top level that are installed as sub-packages of vlprompt.
_PLUGIN_FOLDERS = ("trainers", "datasets")


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``vlprompt.trainers``/``vlprompt.datasets`` in a source checkout that is not installed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != __name__ or parts[1] not in _PLUGIN_FOLDERS:
            return None
        location = self.root.joinpath(*parts[1:])
        if location.is_dir():
            return importlib.util.spec_from_file_location(
                fullname, location / "__init__.py", submodule_search_locations=[str(location)]
            )
        module_file = location.with_suffix(".py")
        if module_file.is_file():
            return importlib.util.spec_from_file_location(fullname, module_file)
        return None


def _map_checkout_folders() -> None:
    package_dir = Path(__file__).resolve().parent
    if all((package_dir / name).is_dir() for name in _PLUGIN_FOLDERS):
        return  # installed: the folders were shipped inside the package
    root = package_dir.parent
    if all((root / name / "__init__.py").is_file() for name in _PLUGIN_FOLDERS):
        sys.meta_path.append(_CheckoutFinder(root))


_map_checkout_folders()
