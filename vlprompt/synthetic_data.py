"""Small synthetic dataset trees in the real layouts, for tests and the README demo.

Images are class-distinguishable (a per-class colour and stripe direction/period, plus noise), so a
prompt-tuning method trained on them actually improves; everything is deterministic for a seed.
"""

from __future__ import annotations

import colorsys
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

# The 37 Oxford-IIIT Pet breeds in their official class-id order (ids 1..37), spelled as in the image
# file names: cats capitalised, dogs lower-case.
OXFORD_PETS_BREEDS = (
    "Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
    "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
    "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
    "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
    "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
    "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip


def class_image(class_index: int, num_classes: int, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of class ``class_index``: its own hue and stripe pattern, plus per-image noise."""
    hue = class_index / max(num_classes, 1)
    base = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.9)) * 255.0
    angle = np.pi * class_index / max(num_classes, 1)
    period = 6.0 + 3.0 * (class_index % 4)
    phase = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period + phase)
    pixels = base[None, None, :] * (0.7 + 0.3 * stripes[..., None])
    pixels += rng.normal(0.0, 12.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def write_oxford_pets(
    root: str | Path,
    num_classes: int = 5,
    images_per_class: int = 12,
    image_size: int = 64,
    with_split_json: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``root/oxford_pets`` as CoOp reads it and return that folder.

    Per class, images ``<Breed>_<n>.jpg`` for n = 1..images_per_class, the last third listed in
    ``annotations/test.txt`` and the rest in ``trainval.txt``; the optional ``split_zhou_OxfordPets.json``
    puts 20% of each class's trainval into val (12 images → 6 train / 2 val / 4 test).
    """
    if not 1 <= num_classes <= len(OXFORD_PETS_BREEDS):
        raise ValueError(f"num_classes is {num_classes}; Oxford Pets has 1..{len(OXFORD_PETS_BREEDS)} classes")
    if images_per_class < 4:
        raise ValueError(f"images_per_class is {images_per_class}; need >= 4 for non-empty train/val/test")

    dataset_dir = Path(root) / "oxford_pets"
    image_dir = dataset_dir / "images"
    anno_dir = dataset_dir / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    anno_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    split_rng = random.Random(seed)  # private, so writing a fixture never moves the global stream
    num_test = images_per_class // 3
    trainval_lines, test_lines = [], []
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    species_counts = {1: 0, 2: 0}
    for class_index, breed in enumerate(OXFORD_PETS_BREEDS[:num_classes]):
        species = 1 if breed[0].isupper() else 2  # 1 = cat, 2 = dog
        species_counts[species] += 1
        names = [f"{breed}_{n}" for n in range(1, images_per_class + 1)]
        for name in names:
            class_image(class_index, num_classes, image_size, rng).save(image_dir / f"{name}.jpg", quality=90)
        line_tail = f"{class_index + 1} {species} {species_counts[species]}"
        trainval, test = names[: images_per_class - num_test], names[images_per_class - num_test :]
        trainval_lines += [f"{name} {line_tail}" for name in trainval]
        test_lines += [f"{name} {line_tail}" for name in test]

        classname = breed.lower()
        shuffled = list(trainval)
        split_rng.shuffle(shuffled)
        n_val = round(len(shuffled) * 0.2)
        split["val"] += [[f"{name}.jpg", class_index, classname] for name in shuffled[:n_val]]
        split["train"] += [[f"{name}.jpg", class_index, classname] for name in shuffled[n_val:]]
        split["test"] += [[f"{name}.jpg", class_index, classname] for name in test]

    (anno_dir / "trainval.txt").write_text("\n".join(trainval_lines) + "\n")
    (anno_dir / "test.txt").write_text("\n".join(test_lines) + "\n")
    split_path = dataset_dir / "split_zhou_OxfordPets.json"
    if with_split_json:
        split_path.write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    elif split_path.exists():
        split_path.unlink()
    return dataset_dir
