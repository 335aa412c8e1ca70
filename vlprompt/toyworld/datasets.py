"""The toy world as datasets on disk, one per domain plus a novel-class and an attribute-only variant.

Layout under ``DATASET.ROOT`` (CoOp's split-JSON layout, as Caltech101/Food101 use it)::

    toyworld/world.json                          what was generated (the completion marker)
    toyworld/<folder>/images/<class_folder>/<class_folder>_<n>.png
    toyworld/<folder>/split_zhou_<DATASET.NAME>.json   {"train"|"val"|"test": [[relpath, label, classname], ...]}

=================  ===========  ===========  ==============================================================
DATASET.NAME       folder       domain       classes
=================  ===========  ===========  ==============================================================
ToyWorld           photo        photo        24 combinations seen in pretraining (the ImageNet analogue)
ToyWorldSketch     sketch       sketch       the same 24, edges only (ImageNet-Sketch)
ToyWorldR          rendition    rendition    the same 24, altered palette and style (ImageNet-R)
ToyWorldA          adversarial  adversarial  the same 24, hard crops, clutter and occluders (ImageNet-A)
ToyWorldNovel      novel        photo        the 24 (labels 0-23, "base") + 24 held-out combinations
                                             (labels 24-47, "new"): ``SUBSAMPLE_CLASSES base/new`` splits them
ToyWorldPatterns   patterns     photo        4 classes by pattern alone ("striped"): names of a kind the
                                             captions never used alone (they always name the shape)
=================  ===========  ===========  ==============================================================

Every image is a pure function of (world seed, dataset name, label, index), so any subset can be
regenerated identically and datasets never share an image.
"""

from __future__ import annotations

import json
import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.engine.data import write_json_atomic
from vlprompt.toyworld.render import DEFAULT_SIZE, render_class
from vlprompt.toyworld.world import ToyClass, attribute_classes, held_out_combinations, seen_combinations

GENERATOR_VERSION = 2  # bump when rendering or class selection changes what a seed produces
WORLD_FOLDER = "toyworld"
WORLD_FILE = "world.json"
WORLD_SEED = 0
NUM_WORLD_CLASSES = 24


@dataclass(frozen=True)
class ToyDatasetSpec:
    """One dataset of the world: its registry name, folder, rendering domain and classes in label order."""

    name: str
    folder: str
    domain: str
    classes: tuple[ToyClass, ...]
    test_per_class: int = 10  # the default; small class sets get more for a steadier accuracy

    @property
    def split_file(self) -> str:
        return f"split_zhou_{self.name}.json"


def world_classes(seed: int = WORLD_SEED) -> list[ToyClass]:
    """The main class set: 24 pretrained combinations in a seeded random order (the label order)."""
    return random.Random(seed).sample(seen_combinations(), NUM_WORLD_CLASSES)


def novel_classes(seed: int = WORLD_SEED) -> list[ToyClass]:
    """24 of the 36 combinations held out of pretraining, in a seeded random order."""
    return random.Random(seed + 1).sample(held_out_combinations(), NUM_WORLD_CLASSES)


def dataset_specs(seed: int = WORLD_SEED) -> dict[str, ToyDatasetSpec]:
    """Every toy-world dataset by ``DATASET.NAME``."""
    main = tuple(world_classes(seed))
    specs = [
        ToyDatasetSpec("ToyWorld", "photo", "photo", main),
        ToyDatasetSpec("ToyWorldSketch", "sketch", "sketch", main),
        ToyDatasetSpec("ToyWorldR", "rendition", "rendition", main),
        ToyDatasetSpec("ToyWorldA", "adversarial", "adversarial", main),
        ToyDatasetSpec("ToyWorldNovel", "novel", "photo", main + tuple(novel_classes(seed))),
        ToyDatasetSpec("ToyWorldPatterns", "patterns", "photo", tuple(attribute_classes("pattern")), 50),
    ]
    return {spec.name: spec for spec in specs}


def _image_rng(seed: int, dataset: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(dataset.encode()), label, index])


def render_dataset_image(spec: ToyDatasetSpec, label: int, index: int, seed: int = WORLD_SEED,
                         image_size: int = DEFAULT_SIZE) -> np.ndarray:
    """Image ``index`` of class ``label`` of ``spec`` (uint8 ``(size, size, 3)``).

    A partial class (e.g. "striped") draws its colour and shape uniformly among the pretrained
    combinations that match it.
    """
    rng = _image_rng(seed, spec.name, label, index)
    target = spec.classes[label]
    if target.is_full:
        combo = target
    else:
        candidates = [combo for combo in seen_combinations() if target.matches(combo)]
        combo = candidates[int(rng.integers(len(candidates)))]
    image, _ = render_class(combo, spec.domain, rng, image_size)
    return image


def _per_class(spec: ToyDatasetSpec, train: int, val: int, test: int | None) -> dict[str, int]:
    return {"train": train, "val": val, "test": spec.test_per_class if test is None else test}


def _world_record(seed: int, image_size: int, counts: dict[str, dict], specs: dict[str, ToyDatasetSpec]) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "datasets": {
            name: {"folder": spec.folder, "domain": spec.domain, "per_class": counts[name],
                   "classes": [c.name for c in spec.classes]}
            for name, spec in specs.items()
        },
    }


def write_toyworld(
    root: str | os.PathLike,
    seed: int = WORLD_SEED,
    image_size: int = DEFAULT_SIZE,
    train_per_class: int = 16,
    val_per_class: int = 4,
    test_per_class: int | None = None,
    names: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the toy-world datasets under ``root/toyworld`` and return that folder.

    Nothing is rewritten when ``world.json`` already records the same generator version and arguments
    (so callers may call this every time); ``world.json`` is written last, so an interrupted run is
    redone. ``names`` selects datasets (default: all of :func:`dataset_specs`); ``test_per_class`` None
    keeps each dataset's own (10; 50 for the 4-class ToyWorldPatterns).
    """
    for label, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class),
                         ("test_per_class", 1 if test_per_class is None else test_per_class)):
        if value < 1:
            raise ValueError(f"{label} is {value}; every split needs at least one image per class")
    all_specs = dataset_specs(seed)
    unknown = sorted(set(names or ()) - set(all_specs))
    if unknown:
        raise ValueError(f"unknown toy-world datasets {unknown}; choose from {', '.join(all_specs)}")
    specs = {name: spec for name, spec in all_specs.items() if names is None or name in names}
    counts = {name: _per_class(spec, train_per_class, val_per_class, test_per_class) for name, spec in specs.items()}
    record = _world_record(seed, image_size, counts, specs)

    world_dir = Path(root) / WORLD_FOLDER
    marker = world_dir / WORLD_FILE
    if not overwrite and marker.is_file():
        try:
            if json.loads(marker.read_text()) == record:
                return world_dir
        except (OSError, ValueError):
            pass  # unreadable marker: regenerate
    marker.unlink(missing_ok=True)
    for spec in specs.values():
        _write_dataset(world_dir, spec, seed, image_size, counts[spec.name])
    atomic_write_text(str(marker), json.dumps(record, indent=2) + "\n")
    return world_dir


def _write_dataset(world_dir: Path, spec: ToyDatasetSpec, seed: int, image_size: int, sizes: dict) -> None:
    dataset_dir = world_dir / spec.folder
    image_dir = dataset_dir / "images"
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, toy_class in enumerate(spec.classes):
        class_dir = image_dir / toy_class.folder
        class_dir.mkdir(parents=True, exist_ok=True)
        index = 0
        for key in ("train", "val", "test"):
            for _ in range(sizes[key]):
                filename = f"{toy_class.folder}_{index + 1}.png"
                image = render_dataset_image(spec, label, index, seed, image_size)
                Image.fromarray(image).save(class_dir / filename, optimize=False)
                split[key].append([f"{toy_class.folder}/{filename}", label, toy_class.name])
                index += 1
    write_json_atomic(split, str(dataset_dir / spec.split_file))
