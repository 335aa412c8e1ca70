"""Small synthetic dataset trees in the real layouts, for tests and the README demo.

Images are class-distinguishable (a per-class colour and stripe direction/period, plus noise), so a
prompt-tuning method trained on them actually improves; everything is deterministic for a seed.
"""

from __future__ import annotations

import colorsys
import json
import os
import random
import re
import shutil
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


# ---------------------------------------------------------------------------------------------------
# The other 14 layouts. Class names are real ones (spelled as each dataset ships them) so the class-name
# rules are exercised; the split JSONs are written from a private RNG, like a released split file.
# ---------------------------------------------------------------------------------------------------

CALTECH101_FOLDERS = ("Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant", "barrel")
CALTECH101_IGNORED = ("BACKGROUND_Google", "Faces_easy")
STANFORD_CARS_NAMES = (
    "AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012", "Acura Integra Type R 2001",
)  # fmt: skip
OXFORD_FLOWERS_NAMES = (
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold", "tiger lily",
)  # fmt: skip
FOOD101_CLASSES = ("apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad")
FGVC_AIRCRAFT_VARIANTS = ("707-320", "727-200", "A300B4", "F-16A/B", "Falcon 900", "Tu-134")
SUN397_CLASSES = ("a/abbey", "a/apartment_building/outdoor", "b/bakery/shop", "b/ballroom", "c/cafeteria",
                  "d/dining_room")
DTD_CLASSES = ("banded", "blotchy", "braided", "bubbly", "bumpy", "chequered")
EUROSAT_CLASSES = ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake")
UCF101_ACTIONS = ("ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching")

# Real WordNet ids of ImageNet's first five classes; the rest are synthetic ids that sort in label order
# (all that matters: classnames.txt lists folders sorted, so label i is the i-th line).
_FIRST_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475")


def imagenet_wnids() -> list[str]:
    """1000 folder names in sorted order, one per ImageNet class (see :data:`_FIRST_WNIDS`)."""
    return list(_FIRST_WNIDS) + [f"n0{1500000 + 1000 * i:07d}" for i in range(len(_FIRST_WNIDS), 1000)]


def imagenet_classnames_text() -> str:
    """CoOp's ``classnames.txt``: ``<wnid> <class name>`` per line, in label order."""
    from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES

    return "".join(f"{wnid} {name}\n" for wnid, name in zip(imagenet_wnids(), IMAGENET_CLASSNAMES))


class _Painter:
    """Writes class images (reusing :func:`class_image`) with one seeded generator per tree."""

    def __init__(self, num_classes: int, size: int, seed: int) -> None:
        self.num_classes, self.size = num_classes, size
        self.rng = np.random.default_rng(seed)

    def paint(self, path: Path, class_index: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        class_image(class_index, self.num_classes, self.size, self.rng).save(path, quality=90)


def _check_counts(name: str, num_classes: int, available: int, images_per_class: int, minimum: int) -> None:
    if not 1 <= num_classes <= available:
        raise ValueError(f"{name}: num_classes is {num_classes}; the synthetic tree has 1..{available} classes")
    if images_per_class < minimum:
        raise ValueError(f"{name}: images_per_class is {images_per_class}; need >= {minimum} for non-empty splits")


def _three_way(names: list, rng: random.Random) -> tuple[list, list, list]:
    """A 50/20/30 cut after a private shuffle (as a released split file would hold)."""
    shuffled = list(names)
    rng.shuffle(shuffled)
    n_train, n_val = round(len(shuffled) * 0.5), round(len(shuffled) * 0.2)
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


def _trainval_cut(names: list, rng: random.Random) -> tuple[list, list]:
    """An 80/20 train/val cut of one class's trainval images after a private shuffle."""
    shuffled = list(names)
    rng.shuffle(shuffled)
    n_val = round(len(shuffled) * 0.2)
    return shuffled[n_val:], shuffled[:n_val]


def _write_split(path: Path, split: dict | None) -> None:
    """Write the CoOp split JSON (``indent=4``), or make sure there is none."""
    if split is not None:
        path.write_text(json.dumps(split, indent=4, separators=(",", ": ")))
    elif path.exists():
        path.unlink()


def _folder_tree(
    dataset_dir: Path, image_dir: Path, split_name: str, classes: list[str], images_per_class: int,
    image_size: int, with_split_json: bool, seed: int, file_name, class_name=lambda folder: folder,
    extra_folders: tuple[str, ...] = (),
) -> Path:
    """``image_dir/<class>/<file>`` for DTD-style datasets, plus ``split_zhou_<split_name>.json``."""
    painter = _Painter(len(classes), image_size, seed)
    split_rng = random.Random(seed)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(classes):
        relpaths = [f"{folder}/{file_name(folder, n)}" for n in range(1, images_per_class + 1)]
        for relpath in relpaths:
            painter.paint(image_dir / relpath, label)
        for key, part in zip(("train", "val", "test"), _three_way(relpaths, split_rng)):
            split[key] += [[relpath, label, class_name(folder)] for relpath in part]
    for folder in extra_folders:  # folders the dataset must ignore
        for n in range(1, 3):
            painter.paint(image_dir / folder / file_name(folder, n), 0)
    _write_split(dataset_dir / f"split_zhou_{split_name}.json", split if with_split_json else None)
    return dataset_dir


def write_caltech101(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``caltech-101/101_ObjectCategories/<folder>/image_NNNN.jpg`` (plus the two ignored folders)."""
    _check_counts("Caltech101", num_classes, len(CALTECH101_FOLDERS), images_per_class, 4)
    renames = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
    dataset_dir = Path(root) / "caltech-101"
    return _folder_tree(
        dataset_dir, dataset_dir / "101_ObjectCategories", "Caltech101", list(CALTECH101_FOLDERS[:num_classes]),
        images_per_class, image_size, with_split_json, seed, lambda folder, n: f"image_{n:04d}.jpg",
        lambda folder: renames.get(folder, folder), extra_folders=CALTECH101_IGNORED,
    )


def write_food101(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``food-101/images/<class>/<id>.jpg``."""
    _check_counts("Food101", num_classes, len(FOOD101_CLASSES), images_per_class, 4)
    dataset_dir = Path(root) / "food-101"
    return _folder_tree(
        dataset_dir, dataset_dir / "images", "Food101", list(FOOD101_CLASSES[:num_classes]), images_per_class,
        image_size, with_split_json, seed, lambda folder, n: f"{1000000 + 7919 * n + len(folder)}.jpg",
    )


def write_dtd(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``dtd/images/<class>/<class>_NNNN.jpg``."""
    _check_counts("DescribableTextures", num_classes, len(DTD_CLASSES), images_per_class, 4)
    dataset_dir = Path(root) / "dtd"
    return _folder_tree(
        dataset_dir, dataset_dir / "images", "DescribableTextures", list(DTD_CLASSES[:num_classes]),
        images_per_class, image_size, with_split_json, seed, lambda folder, n: f"{folder}_{n:04d}.jpg",
    )


EUROSAT_NAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}  # fmt: skip


def write_eurosat(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``eurosat/2750/<Class>/<Class>_<n>.jpg``; the JSON carries CoOp's long class names."""
    _check_counts("EuroSAT", num_classes, len(EUROSAT_CLASSES), images_per_class, 4)
    dataset_dir = Path(root) / "eurosat"
    return _folder_tree(
        dataset_dir, dataset_dir / "2750", "EuroSAT", list(EUROSAT_CLASSES[:num_classes]), images_per_class,
        image_size, with_split_json, seed, lambda folder, n: f"{folder}_{n}.jpg", EUROSAT_NAMES.__getitem__,
    )


def write_oxford_flowers(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True,
                         seed=0) -> Path:
    """``oxford_flowers/jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (1-based labels, classes interleaved
    as in the real file) and ``cat_to_name.json``."""
    from scipy.io import savemat

    _check_counts("OxfordFlowers", num_classes, len(OXFORD_FLOWERS_NAMES), images_per_class, 4)
    dataset_dir = Path(root) / "oxford_flowers"
    painter = _Painter(num_classes, image_size, seed)
    order_rng, split_rng = random.Random(seed + 1), random.Random(seed)
    labels = [label for label in range(1, num_classes + 1) for _ in range(images_per_class)]
    order_rng.shuffle(labels)  # image i's label; classes interleave, so first-appearance order matters
    by_label: dict[int, list[str]] = {}
    for index, label in enumerate(labels, start=1):
        name = f"image_{index:05d}.jpg"
        painter.paint(dataset_dir / "jpg" / name, label - 1)
        by_label.setdefault(label, []).append(name)
    savemat(dataset_dir / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    cat_to_name = {str(label): OXFORD_FLOWERS_NAMES[label - 1] for label in range(1, num_classes + 1)}
    (dataset_dir / "cat_to_name.json").write_text(json.dumps(cat_to_name, indent=2))
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in sorted(by_label):
        for key, part in zip(("train", "val", "test"), _three_way(by_label[label], split_rng)):
            split[key] += [[name, label - 1, cat_to_name[str(label)]] for name in part]
    _write_split(dataset_dir / "split_zhou_OxfordFlowers.json", split if with_split_json else None)
    return dataset_dir


def _mat_struct(rows: list[dict]) -> np.ndarray:
    """A 1×N MATLAB struct array (what ``loadmat(...)["annotations"]`` returns for the Cars devkit)."""
    fields = list(rows[0])
    array = np.zeros((1, len(rows)), dtype=[(field, "O") for field in fields])
    for i, row in enumerate(rows):
        array[0, i] = tuple(
            np.array([value]) if isinstance(value, str) else np.array([[value]], dtype=np.uint16)
            for value in row.values()
        )
    return array


def write_stanford_cars(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True,
                        seed=0) -> Path:
    """``stanford_cars/{cars_train,cars_test}/NNNNN.jpg`` with the devkit ``.mat`` annotations; 70% of each
    class in ``cars_train`` (trainval), the rest in ``cars_test``."""
    from scipy.io import savemat

    _check_counts("StanfordCars", num_classes, len(STANFORD_CARS_NAMES), images_per_class, 5)
    dataset_dir = Path(root) / "stanford_cars"
    (dataset_dir / "devkit").mkdir(parents=True, exist_ok=True)
    painter = _Painter(num_classes, image_size, seed)
    order_rng, split_rng = random.Random(seed + 1), random.Random(seed)
    num_trainval = round(images_per_class * 0.7)
    annotations: dict[str, list[dict]] = {"cars_train": [], "cars_test": []}
    entries = [(label, n) for label in range(num_classes) for n in range(images_per_class)]
    order_rng.shuffle(entries)  # the real files list classes interleaved
    for label, n in entries:
        folder = "cars_train" if n < num_trainval else "cars_test"
        fname = f"{len(annotations[folder]) + 1:05d}.jpg"
        painter.paint(dataset_dir / folder / fname, label)
        annotations[folder].append({"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": image_size - 1,
                                    "bbox_y2": image_size - 1, "class": label + 1, "fname": fname})
    savemat(dataset_dir / "devkit" / "cars_train_annos.mat", {"annotations": _mat_struct(annotations["cars_train"])})
    savemat(dataset_dir / "cars_test_annos_withlabels.mat", {"annotations": _mat_struct(annotations["cars_test"])})
    names = np.empty((1, num_classes), dtype=object)
    for label in range(num_classes):
        names[0, label] = np.array([STANFORD_CARS_NAMES[label]])
    savemat(dataset_dir / "devkit" / "cars_meta.mat", {"class_names": names})

    def classname(label: int) -> str:
        *words, year = STANFORD_CARS_NAMES[label].split(" ")
        return " ".join([year, *words])

    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label in range(num_classes):
        trainval = [f"cars_train/{a['fname']}" for a in annotations["cars_train"] if a["class"] == label + 1]
        train, val = _trainval_cut(trainval, split_rng)
        split["train"] += [[path, label, classname(label)] for path in train]
        split["val"] += [[path, label, classname(label)] for path in val]
        split["test"] += [[f"cars_test/{a['fname']}", label, classname(label)]
                          for a in annotations["cars_test"] if a["class"] == label + 1]
    _write_split(dataset_dir / "split_zhou_StanfordCars.json", split if with_split_json else None)
    return dataset_dir


def write_fgvc_aircraft(root, num_classes=5, images_per_class=9, image_size=32, with_split_json=True,
                        seed=0) -> Path:
    """``fgvc_aircraft/`` (the ``data/`` folder of fgvc-aircraft-2013b): ``variants.txt``,
    ``images_variant_{train,val,test}.txt`` and ``images/<id>.jpg``. There is no split JSON."""
    del with_split_json  # the dataset has none
    _check_counts("FGVCAircraft", num_classes, len(FGVC_AIRCRAFT_VARIANTS), images_per_class, 3)
    dataset_dir = Path(root) / "fgvc_aircraft"
    painter = _Painter(num_classes, image_size, seed)
    (dataset_dir / "images").mkdir(parents=True, exist_ok=True)
    (dataset_dir / "variants.txt").write_text("".join(f"{v}\n" for v in FGVC_AIRCRAFT_VARIANTS[:num_classes]))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    image_id = 34309
    for n in range(images_per_class):
        for label, variant in enumerate(FGVC_AIRCRAFT_VARIANTS[:num_classes]):
            key = ("train", "val", "test")[n % 3]
            image_id += 7
            painter.paint(dataset_dir / "images" / f"{image_id:07d}.jpg", label)
            lines[key].append(f"{image_id:07d} {variant}")
    for key, rows in lines.items():
        (dataset_dir / f"images_variant_{key}.txt").write_text("".join(f"{row}\n" for row in rows))
    return dataset_dir


def write_sun397(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``sun397/SUN397/<letter>/<class>/sun_<id>.jpg`` with ``ClassName.txt``, ``Training_01.txt`` and
    ``Testing_01.txt`` (70/30 per class)."""
    _check_counts("SUN397", num_classes, len(SUN397_CLASSES), images_per_class, 5)
    dataset_dir = Path(root) / "sun397"
    painter = _Painter(num_classes, image_size, seed)
    split_rng = random.Random(seed)
    num_trainval = round(images_per_class * 0.7)
    classes = SUN397_CLASSES[:num_classes]
    training, testing = [], []
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        relpaths = [f"{cls}/sun_{'abcdefghijklmnopqrstuvwxyz'[label]}{label}{n:03d}.jpg" for n in range(images_per_class)]
        for relpath in relpaths:
            painter.paint(dataset_dir / "SUN397" / relpath, label)
        training += relpaths[:num_trainval]
        testing += relpaths[num_trainval:]
        classname = " ".join(cls.split("/")[1:][::-1])
        train, val = _trainval_cut(relpaths[:num_trainval], split_rng)
        split["train"] += [[p, label, classname] for p in train]
        split["val"] += [[p, label, classname] for p in val]
        split["test"] += [[p, label, classname] for p in relpaths[num_trainval:]]
    (dataset_dir / "ClassName.txt").write_text("".join(f"/{cls}\n" for cls in classes))
    (dataset_dir / "Training_01.txt").write_text("".join(f"/{p}\n" for p in training))
    (dataset_dir / "Testing_01.txt").write_text("".join(f"/{p}\n" for p in testing))
    _write_split(dataset_dir / "split_zhou_SUN397.json", split if with_split_json else None)
    return dataset_dir


def write_ucf101(root, num_classes=5, images_per_class=10, image_size=32, with_split_json=True, seed=0) -> Path:
    """``ucf101/UCF-101-midframes/<Renamed_Action>/v_<Action>_gXX_cYY.jpg`` and ``ucfTrainTestlist/``
    (``classInd.txt``, ``trainlist01.txt``, ``testlist01.txt``; CRLF line ends as in the release)."""
    _check_counts("UCF101", num_classes, len(UCF101_ACTIONS), images_per_class, 5)
    dataset_dir = Path(root) / "ucf101"
    lists = dataset_dir / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    painter = _Painter(num_classes, image_size, seed)
    split_rng = random.Random(seed)
    num_test = images_per_class - round(images_per_class * 0.7)
    train_lines, test_lines = [], []
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, action in enumerate(UCF101_ACTIONS[:num_classes]):
        renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
        # Groups 01..07 are UCF's test groups in split 1; the rest train.
        videos = [f"v_{action}_g{(n // 2) + 1:02d}_c{(n % 2) + 1:02d}" for n in range(images_per_class)]
        for video in videos:
            painter.paint(dataset_dir / "UCF-101-midframes" / renamed / f"{video}.jpg", label)
        test, trainval = videos[:num_test], videos[num_test:]
        train_lines += [f"{action}/{video}.avi {label + 1}" for video in trainval]
        test_lines += [f"{action}/{video}.avi" for video in test]
        train, val = _trainval_cut([f"{renamed}/{video}.jpg" for video in trainval], split_rng)
        split["train"] += [[p, label, renamed] for p in train]
        split["val"] += [[p, label, renamed] for p in val]
        split["test"] += [[f"{renamed}/{video}.jpg", label, renamed] for video in test]
    class_ind = [f"{i + 1} {action}" for i, action in enumerate(UCF101_ACTIONS[:num_classes])]
    for name, rows in (("classInd.txt", class_ind), ("trainlist01.txt", train_lines), ("testlist01.txt", test_lines)):
        (lists / name).write_bytes("".join(f"{row}\r\n" for row in rows).encode())
    _write_split(dataset_dir / "split_zhou_UCF101.json", split if with_split_json else None)
    return dataset_dir


# ------------------------------------------------------------------------------------- ImageNet family

IMAGENET_SYNTHETIC_CLASSES = (0, 1, 2, 3, 4)  # label indices of the synthetic ImageNet's class folders
IMAGENET_A_CLASSES = (6, 11, 300, 998)  # a 200-class set's members, as 1000-way indices
IMAGENET_R_CLASSES = (1, 2, 500, 999)
IMAGENET_SKETCH_CLASSES = (0, 3, 7, 42, 999)


def _wnid_folders(image_dir: Path, class_indices, images_per_class: int, painter: _Painter, file_name) -> None:
    wnids = imagenet_wnids()
    for position, index in enumerate(class_indices):
        for n in range(images_per_class):
            painter.paint(image_dir / wnids[index] / file_name(wnids[index], n), position)


def write_imagenet(root, class_indices=IMAGENET_SYNTHETIC_CLASSES, train_per_class=6, val_per_class=3,
                   image_size=32, seed=0) -> Path:
    """``imagenet/images/{train,val}/<wnid>/*.JPEG`` (val sorted into class folders) and the 1000-line
    ``imagenet/classnames.txt``."""
    dataset_dir = Path(root) / "imagenet"
    painter = _Painter(len(class_indices), image_size, seed)
    _wnid_folders(dataset_dir / "images" / "train", class_indices, train_per_class, painter,
                  lambda wnid, n: f"{wnid}_{n + 1}.JPEG")
    counter = iter(range(1, 1 + len(class_indices) * val_per_class))
    _wnid_folders(dataset_dir / "images" / "val", class_indices, val_per_class, painter,
                  lambda wnid, n: f"ILSVRC2012_val_{next(counter):08d}.JPEG")
    (dataset_dir / "classnames.txt").write_text(imagenet_classnames_text())
    return dataset_dir


def write_imagenetv2(root, images_per_class=1, distinct_images=10, image_size=16, seed=0) -> Path:
    """``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg`` and ``classnames.txt``.

    The layout needs all 1000 folders; to stay cheap only ``distinct_images`` images are encoded and the
    rest are hard links (copies where links are unsupported) of them.
    """
    dataset_dir = Path(root) / "imagenetv2"
    image_dir = dataset_dir / "imagenetv2-matched-frequency-format-val"
    painter = _Painter(distinct_images, image_size, seed)
    sources: list[Path] = []
    for label in range(1000):
        for n in range(images_per_class):
            path = image_dir / str(label) / f"{label:04d}{n:02d}a1b2c3.jpeg"
            if len(sources) < distinct_images:
                painter.paint(path, len(sources))
                sources.append(path)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            source = sources[(label * images_per_class + n) % distinct_images]
            try:
                os.link(source, path)
            except OSError:
                shutil.copyfile(source, path)
    (dataset_dir / "classnames.txt").write_text(imagenet_classnames_text())
    return dataset_dir


def write_imagenet_sketch(root, class_indices=IMAGENET_SKETCH_CLASSES, images_per_class=2, image_size=32,
                          seed=0) -> Path:
    """``imagenet-sketch/images/<wnid>/sketch_<n>.JPEG`` and ``classnames.txt``."""
    dataset_dir = Path(root) / "imagenet-sketch"
    painter = _Painter(len(class_indices), image_size, seed)
    _wnid_folders(dataset_dir / "images", class_indices, images_per_class, painter,
                  lambda wnid, n: f"sketch_{n + 1}.JPEG")
    (dataset_dir / "classnames.txt").write_text(imagenet_classnames_text())
    return dataset_dir


def _write_200_class_set(dataset_dir: Path, inner: str, class_indices, images_per_class: int, image_size: int,
                         seed: int) -> Path:
    painter = _Painter(len(class_indices), image_size, seed)
    _wnid_folders(dataset_dir / inner, class_indices, images_per_class, painter,
                  lambda wnid, n: f"{n:01d}.{wnid[-4:]}.jpg")
    (dataset_dir / inner / "README.txt").write_text(f"{inner}: a 200-class subset of ImageNet (synthetic)\n")
    (dataset_dir / "classnames.txt").write_text(imagenet_classnames_text())
    return dataset_dir


def write_imagenet_a(root, class_indices=IMAGENET_A_CLASSES, images_per_class=2, image_size=32, seed=0) -> Path:
    """``imagenet-adversarial/imagenet-a/<wnid>/*.jpg`` (+ ``README.txt``) and ``classnames.txt``."""
    return _write_200_class_set(Path(root) / "imagenet-adversarial", "imagenet-a", class_indices,
                                images_per_class, image_size, seed)


def write_imagenet_r(root, class_indices=IMAGENET_R_CLASSES, images_per_class=2, image_size=32, seed=0) -> Path:
    """``imagenet-rendition/imagenet-r/<wnid>/*.jpg`` (+ ``README.txt``) and ``classnames.txt``."""
    return _write_200_class_set(Path(root) / "imagenet-rendition", "imagenet-r", class_indices,
                                images_per_class, image_size, seed)


# Registered dataset name -> writer of its CoOp layout under a root.
WRITERS = {
    "OxfordPets": write_oxford_pets,
    "Caltech101": write_caltech101,
    "StanfordCars": write_stanford_cars,
    "OxfordFlowers": write_oxford_flowers,
    "Food101": write_food101,
    "FGVCAircraft": write_fgvc_aircraft,
    "SUN397": write_sun397,
    "DescribableTextures": write_dtd,
    "EuroSAT": write_eurosat,
    "UCF101": write_ucf101,
    "ImageNet": write_imagenet,
    "ImageNetV2": write_imagenetv2,
    "ImageNetSketch": write_imagenet_sketch,
    "ImageNetA": write_imagenet_a,
    "ImageNetR": write_imagenet_r,
}
# The datasets whose writer takes ``with_split_json`` (CoOp reads a split_zhou_*.json for them).
SPLIT_JSON_DATASETS = ("OxfordPets", "Caltech101", "StanfordCars", "OxfordFlowers", "Food101", "SUN397",
                       "DescribableTextures", "EuroSAT", "UCF101")


def write_dataset(name: str, root: str | Path, **kwargs) -> Path:
    """Write the synthetic tree of the registered dataset ``name`` under ``root``; returns its folder."""
    if name not in WRITERS:
        raise KeyError(f"No synthetic writer for dataset {name!r}; choose from {', '.join(WRITERS)}")
    return WRITERS[name](root, **kwargs)


def write_all(root: str | Path, with_split_json: bool = True, seed: int = 0) -> Path:
    """All 15 layouts under ``root`` (the ImageNet-V2 tree holds 1000 folders); returns ``root``."""
    for name in WRITERS:
        kwargs = {"with_split_json": with_split_json} if name in SPLIT_JSON_DATASETS else {}
        write_dataset(name, root, seed=seed, **kwargs)
    return Path(root)


# Where TPT's loaders look (data/datautils.py ID_to_DIRNAME, fewshot_datasets.py path_dict): CoOp's folder
# that holds the images or class folders -> the folder under TPT's root that must hold the same content.
TPT_MOVES = {
    "OxfordPets": ("oxford_pets/images", "OxfordPets"),
    "Caltech101": ("caltech-101/101_ObjectCategories", "Caltech101"),
    "StanfordCars": ("stanford_cars", "StanfordCars"),
    "OxfordFlowers": ("oxford_flowers/jpg", "Flower102/jpg"),
    "Food101": ("food-101/images", "Food101/images"),
    "FGVCAircraft": ("fgvc_aircraft", "fgvc_aircraft"),
    "SUN397": ("sun397/SUN397", "SUN397"),
    "DescribableTextures": ("dtd/images", "DTD/images"),
    "EuroSAT": ("eurosat/2750", "eurosat"),
    "UCF101": ("ucf101/UCF-101-midframes", "UCF101"),
    "ImageNet": ("imagenet/images", "ImageNet"),
    "ImageNetV2": ("imagenetv2/imagenetv2-matched-frequency-format-val", "imagenetv2-matched-frequency-format-val"),
    "ImageNetSketch": ("imagenet-sketch/images", "ImageNet-Sketch"),
    "ImageNetA": ("imagenet-adversarial/imagenet-a", "imagenet-a"),
    "ImageNetR": ("imagenet-rendition/imagenet-r", "imagenet-r"),
}


def convert_to_tpt_layout(coop_root: str | Path, tpt_root: str | Path, names=None,
                          split_dir: str = "data_splits") -> Path:
    """Copy CoOp-layout trees into TPT's folder names under ``tpt_root``: split JSONs go to
    ``tpt_root/<split_dir>`` (TPT's ``data/data_splits``) and ImageNet's ``classnames.txt`` to
    ``tpt_root/ImageNet/``. Returns ``tpt_root``."""
    coop_root, tpt_root = Path(coop_root), Path(tpt_root)
    (tpt_root / split_dir).mkdir(parents=True, exist_ok=True)
    for name in names or WRITERS:
        source, target = TPT_MOVES[name]
        top = coop_root / source.split("/")[0]
        if not top.exists():
            continue
        if (coop_root / source).resolve() == top.resolve():  # the whole dataset folder (Cars, Aircraft)
            shutil.copytree(top, tpt_root / target, ignore=shutil.ignore_patterns("split_zhou_*.json"))
        else:
            shutil.copytree(coop_root / source, tpt_root / target)
        for split_file in top.glob("split_zhou_*.json"):
            shutil.copyfile(split_file, tpt_root / split_dir / split_file.name)
        if name == "ImageNet":
            shutil.copyfile(top / "classnames.txt", tpt_root / "ImageNet" / "classnames.txt")
    return tpt_root


def write_all_once(root: str | Path, with_split_json: bool = True, seed: int = 0) -> Path:
    """:func:`write_all` unless ``root`` already holds a finished tree (a marker file written last), so
    test modules can share one tree per session."""
    root = Path(root)
    marker = root / f".vlprompt-synthetic-{'json' if with_split_json else 'raw'}-{seed}"
    if not marker.exists():
        write_all(root, with_split_json=with_split_json, seed=seed)
        marker.write_text("complete\n")
    return root
