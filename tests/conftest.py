"""Shared fixtures: tiny random-weight CLIP files and a synthetic OxfordPets tree, built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # lets the suite run from a checkout that is not installed
    sys.path.insert(0, str(REPO_ROOT))

import vlprompt  # noqa: F401 - installs the torchvision shim before any test imports torchvision


@pytest.fixture(scope="session", autouse=True)
def _cache_outside_home(tmp_path_factory):
    """Caches a run writes outside the data (the image check, few-shot caches of read-only data) go to a
    session folder, not the user's ~/.cache; subprocesses inherit it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("VLPROMPT_CACHE", str(tmp_path_factory.mktemp("vlprompt_cache")))
    yield
    patch.undo()


@pytest.fixture(scope="module")
def single_thread():
    """Torch at one thread for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``): tiny models
    gain nothing from threads, and speed tests measure what one thread does."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory) -> dict[str, Path]:
    """fp16 state-dict files of the two tiny CLIPs (a ViT and a ModifiedResNet), as OpenAI ships weights."""
    from vlprompt.tiny_clip import save_tiny_clip

    folder = tmp_path_factory.mktemp("tiny_clip")
    return {kind: save_tiny_clip(folder / f"tiny_{kind}.pt", kind=kind) for kind in ("vit", "rn")}


@pytest.fixture(scope="session")
def tiny_vit(tiny_clip_files) -> str:
    return str(tiny_clip_files["vit"])


@pytest.fixture(scope="session")
def pets_root(tmp_path_factory) -> str:
    """A synthetic OxfordPets tree (5 classes × 12 images, with the split json) — treat as read-only."""
    from vlprompt.synthetic_data import write_oxford_pets

    root = tmp_path_factory.mktemp("data")
    write_oxford_pets(root)
    return str(root)


def config_file(relative: str) -> str:
    return str(REPO_ROOT / "configs" / relative)


def train_args(root: str, output_dir: Path | str, trainer: str, config: str, *extra: str,
               dataset: str = "oxford_pets") -> list[str]:
    """A train.py argument list for a tiny run on CPU (0 workers)."""
    return [
        "--root", root,
        "--trainer", trainer,
        "--dataset-config-file", config_file(f"datasets/{dataset}.yaml"),
        "--config-file", config_file(config),
        "--output-dir", str(output_dir),
        *extra,
    ]


def written_out(words: list[str], name: str, position: str) -> str:
    """The prompt a context of ``words`` with the class ``name`` at ``position`` stands for, as text."""
    name = name.replace("_", " ")
    if position == "end":
        return " ".join([*words, name]) + "."
    if position == "front":
        return " ".join([name, *words]) + "."
    half = len(words) // 2
    return " ".join([*words[:half], name, *words[half:]]) + "."
