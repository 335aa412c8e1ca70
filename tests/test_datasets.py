"""The 15 dataset registrations on synthetic trees in their real layouts: the samples CoOp picks (splits
built from raw annotations, few-shot subsets, base/new), class names, ImageNet-A/R/V2 labelling, the
few-shot cache's safety, TPT's folder names, error messages, and train.py --no-train on every one."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, train_args

import vlprompt.datasets  # noqa: F401 - registers the bundled datasets
from vlprompt.engine import data as engine_data
from vlprompt.engine.config import extend_cfg, get_cfg_default
from vlprompt.engine.registry import DATASET_REGISTRY
from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES
from vlprompt.synthetic_data import (
    IMAGENET_A_CLASSES,
    IMAGENET_R_CLASSES,
    TPT_MOVES,
    convert_to_tpt_layout,
    imagenet_wnids,
    write_all_once,
)

EXPECTED = json.loads((REPO_ROOT / "tests" / "data" / "coop_reference_samples.json").read_text())
FEWSHOT_DATASETS = list(EXPECTED["fewshot"])  # the 10 few-shot benchmarks + ImageNet
RAW_DATASETS = list(EXPECTED["raw_split"])
TEST_ONLY = list(EXPECTED["test_only"])
FOLDER = {name: TPT_MOVES[name][0].split("/")[0] for name in TPT_MOVES}  # CoOp's folder of each dataset
STEMS = {
    "OxfordPets": "oxford_pets", "Caltech101": "caltech101", "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers", "Food101": "food101", "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397",
    "DescribableTextures": "dtd", "EuroSAT": "eurosat", "UCF101": "ucf101", "ImageNet": "imagenet",
    "ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet_sketch", "ImageNetA": "imagenet_a", "ImageNetR": "imagenet_r",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "vlprompt_cache"))


@pytest.fixture(scope="session")
def json_root(tmp_path_factory) -> Path:
    """All 15 layouts with CoOp split files (shared with test_check_data; copy a dataset before changing it)."""
    return write_all_once(tmp_path_factory.getbasetemp() / "synthetic_json", with_split_json=True)


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> Path:
    """The same trees without split files (the raw-annotation path)."""
    return write_all_once(tmp_path_factory.getbasetemp() / "synthetic_raw", with_split_json=False)


def private_copy(root: Path, tmp_path: Path, *names: str) -> Path:
    """A writable copy of the given datasets' folders under a fresh root (without few-shot caches)."""
    target = tmp_path / "data"
    for name in names:
        shutil.copytree(root / FOLDER[name], target / FOLDER[name], ignore=shutil.ignore_patterns("split_fewshot"))
    return target


def build(root, name: str, shots: int = -1, seed: int = -1, subsample: str = "all", **opts):
    """The dataset as train.py builds it: seeds set first (set_random_seed), then the registration."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS = str(root), name, shots
    cfg.SEED, cfg.DATASET.SUBSAMPLE_CLASSES = seed, subsample
    for key, value in opts.items():
        setattr(cfg.DATASET, key, value)
    if seed >= 0:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
    return DATASET_REGISTRY.get(name)(cfg)


def rows(ds, items) -> list[list]:
    return [[os.path.relpath(x.impath, ds.dataset_dir), x.label, x.classname] for x in items]


# ------------------------------------------------------------------------------- same samples as CoOp


@pytest.mark.parametrize("name", FEWSHOT_DATASETS)
def test_splits_classnames_fewshot_and_base_new_match_coop(json_root, name):
    expected = EXPECTED["full"][name]
    ds = build(json_root, name)
    assert ds.classnames == expected["classnames"] and ds.num_classes == expected["num_classes"]
    assert [len(ds.train_x), len(ds.val), len(ds.test)] == expected["sizes"]

    for key, picked in EXPECTED["fewshot"][name].items():
        shots, seed = map(int, key.split("-"))
        ds = build(json_root, name, shots, seed)
        assert rows(ds, ds.train_x) == picked["train"], f"{name} {shots}-shot seed {seed}"
        if name == "ImageNet":  # val is the whole test split, never sampled
            assert ds.val is ds.test and len(ds.test) == expected["sizes"][2]
        else:
            assert rows(ds, ds.val) == picked["val"], f"{name} {shots}-shot seed {seed} (val)"

    for subsample, picked in EXPECTED["subsample"][name].items():
        ds = build(json_root, name, 2, 1, subsample)
        assert ds.classnames == picked["classnames"]
        assert [rows(ds, ds.train_x), rows(ds, ds.val), rows(ds, ds.test)] == [picked["train"], picked["val"],
                                                                                picked["test"]]
    # base = the first ceil(5/2) = 3 labels, new = the other 2, relabelled from 0
    assert EXPECTED["subsample"][name]["base"]["classnames"] == expected["classnames"][:3]
    assert {r[1] for r in EXPECTED["subsample"][name]["new"]["test"]} == {0, 1}


@pytest.mark.parametrize("name", RAW_DATASETS)
def test_split_built_from_raw_annotations_matches_coop_and_is_saved(raw_root, tmp_path, name, capsys):
    root = private_copy(raw_root, tmp_path, name)
    for seed, expected in EXPECTED["raw_split"][name].items():
        ds = build(root, name, seed=int(seed))
        assert [rows(ds, ds.train_x), rows(ds, ds.val), rows(ds, ds.test)] == [expected["train"], expected["val"],
                                                                                expected["test"]]
        saved = json.loads(Path(ds.split_path).read_text())  # CoOp's format, relative to the image folder
        assert saved["test"][0] == [os.path.relpath(ds.test[0].impath, ds.image_dir), ds.test[0].label,
                                    ds.test[0].classname]
        os.remove(ds.split_path)
        # The split and the few-shot draw come from one random stream, as in CoOp.
        ds = build(root, name, 2, int(seed))
        assert rows(ds, ds.train_x) == expected["fewshot2_train"] and rows(ds, ds.val) == expected["fewshot2_val"]
        os.remove(ds.split_path)
    assert "Saved split to" in capsys.readouterr().out


@pytest.mark.parametrize("name", TEST_ONLY)
def test_imagenet_variants_match_coop_and_ignore_shots(json_root, name, capsys):
    expected = EXPECTED["test_only"][name]
    ds = build(json_root, name, 4, 1, "base")  # both ignored by test-only sets
    assert "is test-only; DATASET.NUM_SHOTS and DATASET.SUBSAMPLE_CLASSES ignored" in capsys.readouterr().out
    assert ds.num_classes == expected["num_classes"] and len(ds.test) == expected["size"]
    assert ds.train_x == ds.test and not ds.val
    test_rows, classnames = rows(ds, ds.test), ds.classnames
    if name == "ImageNetV2":
        test_rows, classnames = test_rows[:5] + test_rows[-3:], classnames[:5] + classnames[-3:]
    assert test_rows == expected["test"] and classnames == expected["classnames"]
    assert not list(Path(ds.dataset_dir).rglob("split_fewshot"))  # nothing written


@pytest.mark.parametrize("name, indices", [("ImageNetA", IMAGENET_A_CLASSES), ("ImageNetR", IMAGENET_R_CLASSES)])
def test_imagenet_a_r_label_is_index_among_present_folders(json_root, name, indices):
    ds = build(json_root, name)
    wnids = imagenet_wnids()
    assert ds.num_classes == len(indices) == 4  # a 200-class set: only the present folders are classes
    assert ds.classnames == [IMAGENET_CLASSNAMES[i] for i in indices]
    for item in ds.test:
        assert os.path.basename(os.path.dirname(item.impath)) == wnids[indices[item.label]]
    assert all(not x.impath.endswith("README.txt") for x in ds.test)


def test_imagenetv2_folder_i_is_class_i(json_root):
    ds = build(json_root, "ImageNetV2")
    assert ds.num_classes == 1000 and ds.classnames == list(IMAGENET_CLASSNAMES)
    by_folder = {os.path.basename(os.path.dirname(x.impath)): x for x in ds.test}
    assert by_folder["10"].label == 10 and by_folder["10"].classname == IMAGENET_CLASSNAMES[10]
    assert by_folder["999"].label == 999  # numeric, not the string order ("10" < "2")


def test_imagenet_reads_folders_without_pickles(json_root, tmp_path):
    root = private_copy(json_root, tmp_path, "ImageNet")
    ds = build(root, "ImageNet", 2, 1)
    assert len(ds.train_x) == 10 and ds.val is ds.test and len(ds.test) == 15
    assert not list(root.rglob("*.pkl"))
    [cache] = (root / "imagenet" / "split_fewshot").iterdir()
    record = json.loads(cache.read_text())
    assert record["val"] is None and len(record["train"]) == 10  # train only, as CoOp's ImageNet


# --------------------------------------------------------------------------------- few-shot cache


def test_fewshot_is_deterministic_changes_with_seed_and_ignores_cache_location(json_root, tmp_path, monkeypatch, capsys):
    root = private_copy(json_root, tmp_path, "DescribableTextures")
    dataset_dir = root / "dtd"

    def picked(ds):
        return rows(ds, ds.train_x + ds.val)

    first = picked(build(root, "DescribableTextures", 2, 1))
    assert "Saving preprocessed few-shot data to " + str(dataset_dir / "split_fewshot") in capsys.readouterr().out
    assert picked(build(root, "DescribableTextures", 2, 1)) == first  # from the cache
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert picked(build(root, "DescribableTextures", 2, 2)) != first  # another seed, another subset

    # Sampled afresh (no cache) into the fallback cache when the dataset folder is read-only: same subset.
    shutil.rmtree(dataset_dir / "split_fewshot")
    writable = engine_data._dir_is_writable
    monkeypatch.setattr(engine_data, "_dir_is_writable",
                        lambda folder: not str(folder).startswith(str(dataset_dir)) and writable(folder))
    assert picked(build(root, "DescribableTextures", 2, 1)) == first
    assert "vlprompt_cache" in capsys.readouterr().out and not (dataset_dir / "split_fewshot").exists()
    monkeypatch.setattr(engine_data, "_dir_is_writable", writable)

    # Moving the data root keeps the cache (relative paths); a changed split gets a new cache file.
    shutil.rmtree(tmp_path / "vlprompt_cache")
    build(root, "DescribableTextures", 2, 1)
    assert (dataset_dir / "split_fewshot").is_dir()
    moved = tmp_path / "moved"
    shutil.move(str(root), str(moved))
    assert picked(build(moved, "DescribableTextures", 2, 1)) == first
    assert "Loading preprocessed few-shot data from " + str(moved / "dtd") in capsys.readouterr().out
    split_path = moved / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(split_path.read_text())
    split["train"] = split["train"][1:]
    split_path.write_text(json.dumps(split))
    build(moved, "DescribableTextures", 2, 1)
    assert "Saving preprocessed few-shot data" in capsys.readouterr().out
    assert len(list((moved / "dtd" / "split_fewshot").glob("shot_2-seed_1-*.json"))) == 2
    assert not list(moved.rglob("*.pkl"))


# -------------------------------------------------------------------------------------- TPT layout

TPT_CASES = ["OxfordPets", "OxfordFlowers", "Caltech101", "StanfordCars", "EuroSAT", "ImageNet", "ImageNetA",
             "ImageNetSketch", "FGVCAircraft"]


def test_tpt_folder_names_give_the_same_data(json_root, tmp_path):
    tpt_root = convert_to_tpt_layout(json_root, tmp_path / "tpt", names=TPT_CASES)
    assert (tpt_root / "OxfordPets" / "Abyssinian_1.jpg").is_file() and (tpt_root / "ImageNet" / "val").is_dir()
    for name in TPT_CASES:
        coop = build(json_root, name)
        tpt = build(tpt_root, name, LAYOUT="tpt", SPLIT_DIR=str(tpt_root / "data_splits"))
        assert tpt.classnames == coop.classnames, name
        for split in ("train_x", "val", "test"):
            ours, theirs = getattr(tpt, split) or [], getattr(coop, split) or []
            assert [os.path.basename(x.impath) for x in ours] == [os.path.basename(x.impath) for x in theirs], name
            assert [x.label for x in ours] == [x.label for x in theirs], name

    # Without the option, the error points at it.
    with pytest.raises(FileNotFoundError) as err:
        build(tpt_root, "OxfordPets")
    assert f'Found "{tpt_root / "OxfordPets"}"' in str(err.value) and "DATASET.LAYOUT tpt" in str(err.value)
    # TPT's ImageNet may have no train folder: then it is test-only.
    shutil.rmtree(tpt_root / "ImageNet" / "train")
    ds = build(tpt_root, "ImageNet", LAYOUT="tpt")
    assert not ds.train_x and len(ds.test) == 15 and ds.num_classes == 5
    new = build(tpt_root, "ImageNet", subsample="new", LAYOUT="tpt")  # base/new cut on val's labels
    assert new.classnames == ds.classnames[3:] and {x.label for x in new.test} == {0, 1}


# ------------------------------------------------------------------------------------ error messages


def test_missing_layout_errors_name_the_path_the_layout_and_the_docs(json_root, raw_root, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        build(empty, "Caltech101")
    message = str(err.value)
    assert f'dataset folder not found: "{empty / "caltech-101"}"' in message
    assert "DATASET.ROOT/caltech-101/101_ObjectCategories/<folder>/image_<nnnn>.jpg" in message
    assert 'See DATASETS.md, section "Caltech101"' in message and "python -m vlprompt.check_data" in message

    root = private_copy(raw_root, tmp_path, "SUN397", "ImageNet", "ImageNetV2")
    (root / "sun397" / "Testing_01.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r'neither the split file ".*split_zhou_SUN397.json" nor '
                                                r'".*Testing_01.txt"'):
        build(root, "SUN397")

    shutil.rmtree(root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "17")
    with pytest.raises(FileNotFoundError, match="1 of the 1000 numbered class folders are missing.*first: 17"):
        build(root, "ImageNetV2")

    val = root / "imagenet" / "images" / "val"
    shutil.rmtree(val / imagenet_wnids()[4])
    with pytest.raises(ValueError, match=f"only in train: \\['{imagenet_wnids()[4]}'\\]"):
        build(root, "ImageNet")
    for image in list(val.rglob("*.JPEG")):  # the flat val archive, as downloaded
        image.rename(val / image.name)
    for folder in [p for p in val.iterdir() if p.is_dir()]:
        folder.rmdir()
    with pytest.raises(FileNotFoundError, match="has no class folders but 12 loose files"):
        build(root, "ImageNet")
    (root / "imagenet" / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt not found"):
        build(root, "ImageNet")


def test_missing_image_in_split_file_is_named(json_root, tmp_path):
    root = private_copy(json_root, tmp_path, "Food101")
    victim = root / "food-101" / "images" / "baklava" / min(os.listdir(root / "food-101" / "images" / "baklava"))
    victim.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build(root, "Food101")
    assert str(victim) in str(err.value) and "split_zhou_Food101.json" in str(err.value)


def test_imagenet_variants_find_a_shared_classnames_file(json_root, tmp_path):
    root = private_copy(json_root, tmp_path, "ImageNetA", "ImageNet")
    (root / "imagenet-adversarial" / "classnames.txt").unlink()
    assert build(root, "ImageNetA").classnames[0] == IMAGENET_CLASSNAMES[IMAGENET_A_CLASSES[0]]
    (root / "imagenet" / "classnames.txt").write_text("n01440764 tench\nbroken-line\n")
    with pytest.raises(ValueError, match=r'classnames.txt:2: expected "<wnid> <class name>"'):
        build(root, "ImageNetA")


# ------------------------------------------------------------------------------ through train.py


@pytest.mark.parametrize("name", list(STEMS))
def test_every_registration_loads_through_train_py(json_root, tiny_vit, tmp_path, capsys, name):
    from vlprompt.cli import main

    root = json_root if name in TEST_ONLY else private_copy(json_root, tmp_path, name)
    trainer = main(train_args(str(root), tmp_path / "out", "CoOp", "trainers/CoOp/vit_b16.yaml", "--no-train",
                              "--seed", "1", "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0",
                              "DATASET.NUM_SHOTS", "2", "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.PREC", "fp32",
                              dataset=STEMS[name]))
    printed = capsys.readouterr().out
    dataset = trainer.dm.dataset
    expected_classes = EXPECTED["full"][name]["num_classes"] if name in EXPECTED["full"] else \
        EXPECTED["test_only"][name]["num_classes"]
    assert re.search(rf"^Dataset\s+{name}$", printed, re.MULTILINE)  # Dassl's summary table
    assert re.search(rf"^# classes\s+{expected_classes:,}$", printed, re.MULTILINE)
    assert trainer.dm.num_classes == expected_classes
    assert len(trainer.model.prompt_learner.tokenized_prompts) == len(dataset.classnames) == expected_classes
    if name in EXPECTED["fewshot"]:
        assert rows(dataset, dataset.train_x) == EXPECTED["fewshot"][name]["2-1"]["train"]


def test_corrupt_image_stops_a_run_before_work_or_is_skipped_and_counted(json_root, tiny_vit, tmp_path, capsys,
                                                                       monkeypatch):
    from vlprompt.cli import command, main

    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    victim = root / "dtd" / "images" / split["test"][3][0]
    victim.write_bytes(b"not a jpeg")
    # Found before the first epoch (it sits in the test split, read only after training), named with the fix.
    train = train_args(str(root), tmp_path / "coop", "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "1",
                       "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "1",
                       "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "1", dataset="dtd")
    with pytest.raises(SystemExit) as stop:
        command(train)
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "epoch [" not in captured.out and "Traceback" not in captured.err
    assert "1 image(s) of DescribableTextures cannot be read (1 in test)" in captured.err
    assert f'Cannot read image "{victim}"' in captured.err and "DATALOADER.SKIP_CORRUPT_IMAGES True" in captured.err

    # Skipped: left out (never replaced by a neighbour), counted in the result block and at the end.
    args = train_args(str(root), tmp_path / "zs", "ZeroshotCLIP", "trainers/CoOp/rn50.yaml", "--eval-only",
                      "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "2", "DATALOADER.TEST.BATCH_SIZE", "4",
                      "DATALOADER.SKIP_CORRUPT_IMAGES", "True", dataset="dtd")
    trainer = main(args)
    printed = capsys.readouterr().out
    assert len(trainer.dm.dataset.test) == len(split["test"]) - 1 and trainer.test_results["skipped"] == 1
    assert f"* total: {len(split['test']) - 1}\n" in printed
    assert re.search(r"\* macro_f1: [\d.]+%\n\* skipped: 1 unreadable image\(s\)\n", printed)
    assert f"Skipped 1 unreadable image(s) (DATALOADER.SKIP_CORRUPT_IMAGES True):\n  {victim}" in printed
    assert printed.rindex("Skipped 1 unreadable") > printed.rindex("=> result")  # reported at the end

    # An image that passes the check but fails to decode (check off here) is skipped by the loader workers,
    # each counted once; without the flag it stops the run naming the image and the worker.
    monkeypatch.setenv("VLPROMPT_IMAGE_CHECK", "0")
    trainer = main(args)
    printed = capsys.readouterr().out
    assert len(trainer.dm.dataset.test) == len(split["test"]) and trainer.test_results["skipped"] == 1
    assert f"* total: {len(split['test']) - 1}\n" in printed and "* skipped: 1 unreadable image(s)" in printed
    with pytest.raises(SystemExit):
        command(args[:-2])
    err = capsys.readouterr().err
    assert f'Cannot read image "{victim}"' in err and "DataLoader worker process" in err and "Traceback" not in err
