"""The data checker on complete, incomplete and corrupt synthetic trees: its per-dataset report, its
exit status, and that it writes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlprompt.check_data import BENCHMARKS, check_dataset, main, resolve_name
from vlprompt.synthetic_data import TPT_MOVES, convert_to_tpt_layout, imagenet_classnames_text, write_all_once

# (classes, images) per split of the synthetic trees (synthetic_data defaults: 5 classes; ImageNet-V2 has
# 1000 folders of one image; ImageNet-A/-R 4 of the 200 folders).
EXPECTED_COUNTS = {
    "ImageNet": {"train": (5, 30), "test": (5, 15)},
    "Caltech101": {"train": (5, 25), "val": (5, 10), "test": (5, 15)},
    "OxfordPets": {"train": (5, 30), "val": (5, 10), "test": (5, 20)},
    "StanfordCars": {"train": (5, 30), "val": (5, 5), "test": (5, 15)},
    "OxfordFlowers": {"train": (5, 25), "val": (5, 10), "test": (5, 15)},
    "Food101": {"train": (5, 25), "val": (5, 10), "test": (5, 15)},
    "FGVCAircraft": {"train": (5, 15), "val": (5, 15), "test": (5, 15)},
    "SUN397": {"train": (5, 30), "val": (5, 5), "test": (5, 15)},
    "DescribableTextures": {"train": (5, 25), "val": (5, 10), "test": (5, 15)},
    "EuroSAT": {"train": (5, 25), "val": (5, 10), "test": (5, 15)},
    "UCF101": {"train": (5, 30), "val": (5, 5), "test": (5, 15)},
    "ImageNetV2": {"test": (1000, 1000)},
    "ImageNetSketch": {"test": (5, 10)},
    "ImageNetA": {"test": (4, 8)},
    "ImageNetR": {"test": (4, 8)},
}


@pytest.fixture(scope="session")
def json_root(tmp_path_factory) -> Path:
    """All 15 layouts (shared with test_datasets; copy a dataset before changing it)."""
    return write_all_once(tmp_path_factory.getbasetemp() / "synthetic_json", with_split_json=True)


def copy_of(root: Path, tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "data"
    for name in names:
        folder = TPT_MOVES[name][0].split("/")[0]
        shutil.copytree(root / folder, target / folder, ignore=shutil.ignore_patterns("split_fewshot"))
    return target


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_complete_tree_is_ok_with_counts_and_exit_status_0(json_root, capsys):
    assert main(["--root", str(json_root), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"Checking 15 dataset(s) under {json_root} (coop layout)" in printed
    assert printed.rstrip().endswith("Summary: 15 OK")
    assert "[OK] OxfordPets  (" in printed
    assert "train 30 images / 5 classes | val 10 images / 5 classes | test 20 images / 5 classes" in printed
    assert "test 1,000 images / 1,000 classes" in printed  # ImageNet-V2
    assert f"split: {json_root / 'oxford_pets' / 'split_zhou_OxfordPets.json'}" in printed
    assert "Reading split from" not in printed  # the readers' chatter is kept out of the report
    assert [name for name, _ in BENCHMARKS] == list(EXPECTED_COUNTS)
    for name, counts in EXPECTED_COUNTS.items():
        report = check_dataset(name, str(json_root), check_images=False)
        assert report.ok and report.counts == counts, name


def test_missing_split_file_and_annotations(json_root, tmp_path, capsys):
    root = copy_of(json_root, tmp_path, "SUN397", "OxfordPets")
    (root / "sun397" / "split_zhou_SUN397.json").unlink()
    before = snapshot(root)
    # Without the split file but with the raw annotations: OK, with a note (and nothing is written).
    report = check_dataset("sun397", str(root))
    assert report.ok and report.counts == {"train": (5, 30), "val": (5, 5), "test": (5, 15)}
    assert "split_zhou_SUN397.json not found: a run builds a split" in report.notes[0]
    assert snapshot(root) == before

    (root / "sun397" / "Training_01.txt").unlink()
    report = check_dataset("SUN397", str(root))
    assert report.status == "MISSING" and not report.counts
    split_path = root / "sun397" / "split_zhou_SUN397.json"
    assert f'neither the split file "{split_path}" nor "{root / "sun397" / "Training_01.txt"}"' in report.message
    assert "DATASET.ROOT/sun397/ClassName.txt, Training_01.txt, Testing_01.txt" in report.message
    assert 'See DATASETS.md, section "SUN397"' in report.message

    shutil.rmtree(root / "oxford_pets")
    assert main(["--root", str(root), "--dataset", "oxford_pets", "sun397"]) == 1
    printed = capsys.readouterr().out
    assert f'[MISSING] OxfordPets\n    OxfordPets: dataset folder not found: "{root / "oxford_pets"}"' in printed
    assert "DATASET.ROOT/oxford_pets/images/<Breed>_<n>.jpg" in printed
    assert printed.rstrip().endswith("Summary: 2 MISSING")


def test_missing_images_are_all_listed(json_root, tmp_path, capsys):
    root = copy_of(json_root, tmp_path, "Caltech101")
    split = json.loads((root / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    image_dir = root / "caltech-101" / "101_ObjectCategories"
    victims = [image_dir / split["train"][2][0], image_dir / split["test"][-1][0]]
    for victim in victims:
        victim.unlink()
    report = check_dataset("Caltech101", str(root))
    assert report.status == "MISSING" and report.missing == [str(victims[0]), str(victims[1])]
    assert report.counts["train"] == (5, 25)  # as listed
    assert "2 image(s) listed in " + str(root / "caltech-101" / "split_zhou_Caltech101.json") in report.message
    assert main(["--root", str(root), "--dataset", "Caltech101"]) == 1
    printed = capsys.readouterr().out
    assert f"missing images (2):\n      {victims[0]}\n      {victims[1]}" in printed


def test_corrupt_and_truncated_images_are_listed(json_root, tmp_path, capsys):
    root = copy_of(json_root, tmp_path, "DescribableTextures", "ImageNetA")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    garbage = root / "dtd" / "images" / split["val"][0][0]
    garbage.write_bytes(b"definitely not an image")
    truncated = next((root / "imagenet-adversarial" / "imagenet-a").rglob("*.jpg"))
    truncated.write_bytes(truncated.read_bytes()[:200])

    report = check_dataset("dtd", str(root), workers=2)
    assert report.status == "CORRUPT" and [path for path, _ in report.corrupt] == [str(garbage)]
    assert "cannot identify image file" in report.corrupt[0][1]
    assert "SKIP_CORRUPT_IMAGES" in report.message
    report = check_dataset("imagenet_a", str(root))
    assert report.status == "CORRUPT" and report.corrupt[0][0] == str(truncated)
    assert check_dataset("dtd", str(root), check_images=False).ok  # --no-images skips decoding

    assert main(["--root", str(root), "--dataset", "dtd", "ImageNetA"]) == 1
    printed = capsys.readouterr().out
    assert f"unreadable images (1):\n      {garbage}  (Cannot read image" in printed
    assert "Summary: 2 CORRUPT" in printed


def test_tpt_layout_and_names(json_root, tmp_path, capsys):
    tpt = convert_to_tpt_layout(json_root, tmp_path / "tpt", names=["OxfordFlowers", "ImageNetR"])
    (tpt / "classnames.txt").write_text(imagenet_classnames_text())  # TPT has none; one copy at the root serves
    report = check_dataset("OxfordFlowers", str(tpt), layout="tpt", split_dir=str(tpt / "data_splits"))
    assert report.ok and report.dataset_dir == str(tpt / "Flower102")
    assert report.split_source == str(tpt / "data_splits" / "split_zhou_OxfordFlowers.json")
    assert check_dataset("ImageNetR", str(tpt), layout="tpt").counts == {"test": (4, 8)}
    wrong = check_dataset("ImageNetR", str(tpt))
    assert wrong.status == "MISSING" and f'Found "{tpt / "imagenet-r"}"' in wrong.message
    assert "--layout tpt" in wrong.message

    assert resolve_name("dtd") == "DescribableTextures" and resolve_name("IMAGENET_A") == "ImageNetA"
    assert main(["--root", str(tpt), "--dataset", "Imagenet-B"]) == 2
    assert "is not a registered dataset name" in capsys.readouterr().err


def test_split_rows_a_run_would_refuse_are_reported(json_root, tmp_path, capsys):
    root = copy_of(json_root, tmp_path, "EuroSAT")
    split_path = root / "eurosat" / "split_zhou_EuroSAT.json"
    split = json.loads(split_path.read_text())
    split["val"][1][0] = "../../elsewhere/x.jpg"
    split_path.write_text(json.dumps(split))
    report = check_dataset("eurosat", str(root), check_images=False)
    assert report.status == "ERROR"
    assert f'Split file "{split_path}", val row 1' in report.message and "leads outside the image folder" in report.message
    assert main(["--root", str(root), "--dataset", "eurosat"]) == 1
    assert "Summary: 1 ERROR" in capsys.readouterr().out
