"""Installs vlprompt. Trainers and datasets are the packages ``vlprompt.trainers`` and ``vlprompt.datasets``
(the repository's top-level ``trainers/`` and ``datasets/`` only stand for them and are not installed, so
nothing collides with Hugging Face's ``datasets`` package), and ``configs/`` ships as package data (``vlprompt/configs/``, found by :mod:`vlprompt.resources`) so an installed vlprompt
works from any directory."""

from pathlib import Path

from setuptools import find_packages, setup

DATA_FOLDERS = ("configs",)  # yaml only, installed as vlprompt/<folder>/


setup(
    name="vlprompt",
    version="0.1.0",
    description="Prompt tuning for CLIP-like vision-language models (CoOp, CoCoOp, TPT, GenPT), Dassl-compatible",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["vlprompt", "vlprompt.*"]) + [
        f"vlprompt.{folder}" for folder in DATA_FOLDERS],
    package_dir={f"vlprompt.{folder}": folder for folder in DATA_FOLDERS},
    package_data={
        # The micro CLIP pretrained on the toy world (MODEL.BACKBONE.NAME micro-clip) and its provenance.
        "vlprompt.toyworld": ["weights/micro_clip.pt", "weights/micro_clip.json"],
        # open_clip model configs of the tiny random-weight models tests and demos build (no download).
        "vlprompt.modeling.backbones": ["open_clip_configs/*.json"],
        **{f"vlprompt.{folder}": ["**/*.yaml"] for folder in DATA_FOLDERS},
    },
    # No upper bounds and no CUDA pins: an existing (CUDA) torch must never be replaced.
    install_requires=[
        "torch>=1.13",
        "torchvision>=0.14",
        "clip-anytorch>=2.5",
        "yacs>=0.1.8",
        "tabulate",
        "tqdm",
        "ftfy",
        "regex",
        "numpy",
        "pillow",
        "scipy",
        "packaging",
    ],
    extras_require={
        "test": ["pytest>=7", "ruff", "scikit-learn", "matplotlib", "open-clip-torch"],
        # LAION, DataComp, MetaCLIP, ... backbones (MODEL.BACKBONE.NAME open_clip:<model>@<tag>).
        "open_clip": ["open-clip-torch"],
        "tables": ["matplotlib"],
        "linear-probe": ["scikit-learn"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["vlprompt=vlprompt.commands:main", "vlprompt-train=vlprompt.commands:train_main"]},
)
