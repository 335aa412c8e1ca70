"""Data that cannot silently shift labels or lose images: split rows and labels checked before any work,
empty class folders, NUM_SHOTS above what a class has (warned, recorded in run.json), the kill window
between the split JSON and the few-shot cache, the image check before a run (and its cache),
DATALOADER.SKIP_CORRUPT_IMAGES in TPT, and TPT's layout without classnames.txt."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import test_datasets
import torch
from conftest import config_file, train_args
from PIL import Image
from test_datasets import EXPECTED, build, private_copy, rows

import vlprompt.datasets  # registers the bundled datasets
import vlprompt.splits
from vlprompt.engine import data as engine_data
from vlprompt.engine.config import extend_cfg, get_cfg_default
from vlprompt.engine.data import DatasetBase, Datum, find_unreadable_images, probe_image
from vlprompt.engine.evaluation import announce_skipped
from vlprompt.errors import UserError
from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES
from vlprompt.synthetic_data import (
    IMAGENET_A_CLASSES,
    IMAGENET_R_CLASSES,
    convert_to_tpt_layout,
    imagenet_wnids,
    write_imagenet_sketch,
)

# The session's synthetic trees, shared with test_datasets (one definition of each fixture).
json_root = test_datasets.json_root
raw_root = test_datasets.raw_root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "vlprompt_cache"))
    yield
    announce_skipped(None)


# ------------------------------------------------------------------------------------- split rows


def _edit_split(path: Path, edit) -> None:
    split = json.loads(path.read_text())
    edit(split)
    path.write_text(json.dumps(split))


def _relabel(split, old, new):
    for key in ("train", "val", "test"):
        for row in split[key]:
            if row[1] == old:
                row[1] = new


BAD_ROWS = {
    "absolute path": (lambda s: s["train"][1].__setitem__(0, "/etc/hostname"), "train row 1",
                      "the path is absolute"),
    "path outside": (lambda s: s["val"][0].__setitem__(0, "../../dtd/images/x.jpg"), "val row 0",
                     "the path leads outside the image folder"),
    "label 3.7": (lambda s: s["train"][2].__setitem__(1, 3.7), "train row 2", "the label 3.7 is not an integer"),
    "label -1": (lambda s: s["test"][4].__setitem__(1, -1), "test row 4", "the label -1 is negative"),
    "string label": (lambda s: s["train"][0].__setitem__(1, "0"), "train row 0", "the label '0' is not an integer"),
    "short row": (lambda s: s["train"][0].pop(), "train row 0", "expected [relpath, label, classname]"),
    "label 42 in test": (lambda s: s["test"][0].__setitem__(1, 42), "test row 0",
                         "has label 42, which the train split (it defines the classes 0..4) does not have"),
    "label gap": (lambda s: _relabel(s, 4, 7), "labels up to 7 but none of 4, 5, 6",
                  "Renumber the labels to 0..4"),
    "one label two names": (lambda s: s["test"][0].__setitem__(2, "bubbly"), "label 0 is",
                            "a label must name one class"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_split_rows_are_refused_naming_the_file_the_row_and_the_fix(json_root, tmp_path, case):
    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    edit, where, problem = BAD_ROWS[case]
    _edit_split(split_path, edit)
    with pytest.raises(UserError) as err:
        build(root, "DescribableTextures", 2, 1)
    message = str(err.value)
    assert f'Split file "{split_path}"' in message and where in message and problem in message, message
    assert not (root / "dtd" / "split_fewshot").exists()  # refused before any work


def test_integral_float_labels_are_read_as_integers(json_root, tmp_path):
    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    _edit_split(split_path, lambda s: [row.__setitem__(1, float(row[1])) for row in s["train"]])
    ds = build(root, "DescribableTextures")
    assert ds.num_classes == len(ds.classnames) == 5 and all(type(x.label) is int for x in ds.train_x)


def test_a_label_gap_stops_train_py_before_work_with_one_line(json_root, tiny_vit, tmp_path, capsys):
    from vlprompt.cli import command

    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split_path = root / "dtd" / "split_zhou_DescribableTextures.json"
    _edit_split(split_path, lambda s: _relabel(s, 2, 5))  # labels 0, 1, 3, 4, 5: 6 classes for 5 names
    with pytest.raises(SystemExit) as stop:
        command(train_args(str(root), tmp_path / "out", "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "1",
                        "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", "2",
                        "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.PREC", "fp32", dataset="dtd"))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "Building custom CLIP" not in captured.out and "Traceback" not in captured.err
    assert "the train split has labels up to 5 but none of 2" in captured.err


def test_empty_class_folder_is_refused_naming_folder_and_label(json_root, tmp_path):
    root = private_copy(json_root, tmp_path, "ImageNetA")
    wnids = imagenet_wnids()
    empty = root / "imagenet-adversarial" / "imagenet-a" / wnids[7]  # sorts between the 2nd and 3rd class
    empty.mkdir()
    with pytest.raises(UserError) as err:
        build(root, "ImageNetA")
    assert f'Class folder "{empty}" (label 1, "{IMAGENET_CLASSNAMES[7]}") has no images' in str(err.value)
    empty.rmdir()
    assert build(root, "ImageNetA").num_classes == len(IMAGENET_A_CLASSES)


def test_plugin_dataset_with_a_label_gap_is_refused(tmp_path):
    img = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(img)
    items = [Datum(str(img), label=y, classname=f"c{y}") for y in (0, 1, 3)]
    with pytest.raises(UserError, match=r"DatasetBase: the train_x split has labels up to 3 but none of 2"):
        DatasetBase(train_x=items, test=items)
    with pytest.raises(UserError, match=r"test row 0 .* has label 5, which the train_x split"):
        DatasetBase(train_x=items[:2], test=[Datum(str(img), label=5, classname="c5")])


# ---------------------------------------------------------------------------- NUM_SHOTS above what exists


def test_num_shots_above_what_a_class_has_warns_and_is_recorded(json_root, tiny_vit, tmp_path, caplog,
                                                                monkeypatch):
    from vlprompt.cli import main

    monkeypatch.setattr(logging.getLogger("vlprompt"), "propagate", True)  # let caplog see library warnings
    caplog.set_level(logging.WARNING)  # ... and only those (info lines, e.g. the config dump, name NUM_SHOTS)
    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    label1 = [i for i, row in enumerate(split["train"]) if row[1] == 1]
    split["train"] = [row for i, row in enumerate(split["train"]) if i not in label1[2:]]  # class 1 keeps 2
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    per_class = {name: sum(row[2] == name for row in split["train"]) for name in EXPECTED["full"][
        "DescribableTextures"]["classnames"]}
    short = [name for name, n in per_class.items() if n < 4]
    assert len(short) == 1 and per_class[short[0]] == 2

    def run(shots: str, out: str) -> dict:
        main(train_args(str(root), tmp_path / out, "CoOp", "trainers/CoOp/vit_b16.yaml", "--seed", "1",
                        "MODEL.BACKBONE.NAME", tiny_vit, "DATALOADER.NUM_WORKERS", "0", "DATASET.NUM_SHOTS", shots,
                        "TRAINER.COOP.N_CTX", "2", "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "1",
                        dataset="dtd"))
        return json.loads((tmp_path / out / "run.json").read_text())

    caplog.clear()
    record = run("4", "four")
    assert record["shots"] == 4
    assert record["shots_per_class"] == {name: min(n, 4) for name, n in per_class.items()}
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DATASET.NUM_SHOTS is 4 but 1 class(es) have fewer training images" in m
               and f"{short[0]} ({per_class[short[0]]})" in m for m in warned), warned
    caplog.clear()
    assert "shots_per_class" not in run("2", "two")  # every class had its 2 shots
    assert not [r for r in caplog.records if "NUM_SHOTS" in r.getMessage()]


# ---------------------------------------------------------------------------------------- kill window


class Killed(BaseException):
    """A kill at a chosen point (nothing catches BaseException on the way out)."""


def _kill_after_write(module, monkeypatch, marker: str):
    """Make ``module.write_json_atomic`` die right after writing a file whose name contains ``marker``."""
    real = module.write_json_atomic

    def write_then_die(obj, filepath, *args, **kwargs):
        real(obj, filepath, *args, **kwargs)
        if marker in os.path.basename(filepath):
            raise Killed(filepath)

    monkeypatch.setattr(module, "write_json_atomic", write_then_die)


def _kill_before_write(module, monkeypatch, marker: str):
    real = module.write_json_atomic

    def die_first(obj, filepath, *args, **kwargs):
        if marker in os.path.basename(filepath):
            raise Killed(filepath)
        real(obj, filepath, *args, **kwargs)

    monkeypatch.setattr(module, "write_json_atomic", die_first)


KILL_POINTS = {
    "after the split JSON": (vlprompt.splits, _kill_after_write, "split_zhou_"),
    "after the few-shot cache": (engine_data, _kill_after_write, "shot_2-seed_"),
    "before the few-shot cache": (engine_data, _kill_before_write, "shot_2-seed_"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("name", ["DescribableTextures", "OxfordPets"])
def test_a_kill_between_split_json_and_fewshot_cache_cannot_change_the_subset(raw_root, tmp_path, monkeypatch,
                                                                            name, point):
    expected = EXPECTED["raw_split"][name]["1"]  # CoOp's first run: split and subset from one random stream
    root = private_copy(raw_root, tmp_path, name)
    module, inject, marker = KILL_POINTS[point]
    with monkeypatch.context() as patch:
        inject(module, patch, marker)
        with pytest.raises(Killed):
            build(root, name, 2, 1)
    for _ in range(2):  # the rerun, and a run after it
        ds = build(root, name, 2, 1)
        assert rows(ds, ds.train_x) == expected["fewshot2_train"] and rows(ds, ds.val) == expected["fewshot2_val"]
        assert os.path.isfile(ds.split_path)


# ------------------------------------------------------------------------------------------ image check


def _images(folder: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: str(folder / f"{kind}{ext}") for kind, ext in (
        ("good", ".jpg"), ("png", ".png"), ("trailing", ".jpg"), ("garbage", ".jpg"), ("cut_jpeg", ".jpg"),
        ("cut_png", ".png"))}
    for kind in ("good", "trailing", "cut_jpeg"):
        pixels.save(paths[kind], quality=90)
    for kind in ("png", "cut_png"):
        pixels.save(paths[kind])
    Path(paths["trailing"]).write_bytes(Path(paths["trailing"]).read_bytes() + b"camera data" * 20)
    Path(paths["garbage"]).write_bytes(b"definitely not an image")
    for kind in ("cut_jpeg", "cut_png"):
        data = Path(paths[kind]).read_bytes()
        Path(paths[kind]).write_bytes(data[: len(data) * 2 // 3])
    return paths


def test_image_check_finds_garbage_and_cut_files_and_refuses_no_readable_image(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img")
    bad = find_unreadable_images(list(paths.values()))
    assert sorted(bad) == sorted(paths[k] for k in ("garbage", "cut_jpeg", "cut_png"))
    assert bad[paths["garbage"]].startswith(f'Cannot read image "{paths["garbage"]}"')
    assert probe_image(str(tmp_path / "gone.jpg")) == f'Image file not found: "{tmp_path / "gone.jpg"}"'

    # A sound image is judged by its header alone, never decoded.
    def no_decode(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(engine_data, "read_image", no_decode)
    assert probe_image(paths["good"]) is None and probe_image(paths["png"]) is None


def test_image_check_cache_skips_unchanged_images_and_rechecks_changed_ones(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img")
    cache = tmp_path / "cache" / "image_check.json"
    order = list(paths.values())
    first = find_unreadable_images(order, [str(cache)], str(tmp_path))
    record = json.loads(cache.read_text())
    assert record["format"] == "vlprompt-image-check-v1"
    assert sorted(record["images"]) == ["img/good.jpg", "img/png.png", "img/trailing.jpg"]  # relative; bad never
    assert not [p for p in os.listdir(cache.parent) if p.endswith(".tmp")]

    probed = []
    real_probe = engine_data.probe_image
    monkeypatch.setattr(engine_data, "probe_image", lambda path: probed.append(path) or real_probe(path))
    assert find_unreadable_images(order, [str(cache)], str(tmp_path)) == first
    assert sorted(probed) == sorted(first)  # only the unreadable ones are looked at again
    probed.clear()
    Image.new("RGB", (8, 8)).save(paths["good"])  # changed: size and mtime differ
    Path(paths["garbage"]).write_bytes(Path(paths["png"]).read_bytes())  # fixed
    assert sorted(find_unreadable_images(order, [str(cache)], str(tmp_path))) == sorted(
        paths[k] for k in ("cut_jpeg", "cut_png"))
    assert paths["good"] in probed and paths["png"] not in probed


def test_runs_check_images_once_and_remember_them_outside_the_data(json_root, tmp_path, monkeypatch):
    from vlprompt.engine.data import DataManager

    root = private_copy(json_root, tmp_path, "DescribableTextures")
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.DATASET.ROOT, cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED = str(root), "DescribableTextures", 2, 1
    cfg.DATALOADER.NUM_WORKERS, cfg.VERBOSE = 0, False
    probed = []
    real_probe = engine_data.probe_image
    monkeypatch.setattr(engine_data, "probe_image", lambda path: probed.append(path) or real_probe(path))
    dm = DataManager(cfg)
    sizes = [len(dm.dataset.train_x), len(dm.dataset.val), len(dm.dataset.test)]
    assert len(probed) == sum(sizes) == 10 + 10 + 15
    [cache] = (tmp_path / "vlprompt_cache" / "dtd").glob("image_check-*.json")  # in VLPROMPT_CACHE
    assert len(json.loads(cache.read_text())["images"]) == 10 + 10 + 15
    assert not list((root / "dtd" / "split_fewshot").glob("image_check*"))  # nothing beside the data
    probed.clear()
    DataManager(cfg)
    assert probed == []


# ----------------------------------------------------------------------------------------------- TPT

RES = 64
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE", f"({RES}, {RES})", "TRAINER.TPT.N_VIEWS", "4",
        "TRAINER.TPT.SELECTION_P", "0.5", "TRAINER.TPT.PRINT_FREQ", "50"]


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> str:
    from vlprompt.tiny_clip import save_tiny_clip

    return str(save_tiny_clip(tmp_path_factory.mktemp("tiny64") / "vit.pt", "vit", image_resolution=RES))


@pytest.fixture
def one_thread():
    """The tiny models run faster on one thread on a busy machine; the setting is put back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tpt_skips_unreadable_images_and_counts_them(json_root, tiny64, tmp_path, capsys, monkeypatch, one_thread):
    from vlprompt.cli import command, main

    root = private_copy(json_root, tmp_path, "DescribableTextures")
    split = json.loads((root / "dtd" / "split_zhou_DescribableTextures.json").read_text())
    victim = root / "dtd" / "images" / split["test"][5][0]
    victim.write_bytes(b"not a jpeg")

    def tpt(out: str, *extra: str, run=main):
        return run(["--root", str(root), "--trainer", "TPT", "--config-file", config_file("trainers/TPT/vit_b16.yaml"),
                     "--dataset-config-file", config_file("datasets/dtd.yaml"), "--output-dir", str(tmp_path / out),
                     "--seed", "1", "MODEL.BACKBONE.NAME", tiny64, *FAST, *extra])

    with pytest.raises(SystemExit):
        tpt("refused", run=command)
    assert f'Cannot read image "{victim}"' in capsys.readouterr().err

    total = len(split["test"]) - 1
    trainer = tpt("skipped", "DATALOADER.SKIP_CORRUPT_IMAGES", "True")
    printed = capsys.readouterr().out
    assert trainer.test_results["images"] == total and trainer.test_results["skipped"] == 1
    assert f"* total: {total}\n" in printed and "* skipped: 1 unreadable image(s)\n" in printed

    # Found by the loader (check off): skipped there, not replaced by the next image.
    monkeypatch.setenv("VLPROMPT_IMAGE_CHECK", "0")
    trainer = tpt("runtime", "DATALOADER.SKIP_CORRUPT_IMAGES", "True", "TRAINER.TPT.BATCH_IMAGES", "2")
    printed = capsys.readouterr().out
    assert trainer.test_results["images"] == total and trainer.test_results["skipped"] == 1
    logged = [json.loads(line)["i"] for line in
              (tmp_path / "runtime" / "tpt_predictions" / "DescribableTextures.jsonl").read_text().splitlines()[1:]]
    assert sorted(logged) == [i for i in range(len(split["test"])) if i != 5]


# ------------------------------------------------------------------------------------- TPT's layout


def test_tpt_layout_needs_one_key_no_classnames_file(json_root, tmp_path):
    tpt = convert_to_tpt_layout(json_root, tmp_path / "tpt", names=["ImageNetA", "ImageNetR", "ImageNetV2",
                                                                     "OxfordFlowers"])
    assert not list(tpt.rglob("classnames.txt"))
    flowers = build(tpt, "OxfordFlowers", LAYOUT="tpt")  # split files found in DATASET.ROOT/data_splits
    assert flowers.split_path == str(tpt / "data_splits" / "split_zhou_OxfordFlowers.json")
    assert flowers.classnames == build(json_root, "OxfordFlowers").classnames
    with pytest.raises(UserError) as err:  # nothing yet to give the bundled names their folder ids
        build(tpt, "ImageNetA", LAYOUT="tpt")
    assert "classnames.txt not found" in str(err.value) and str(tpt / "ImageNet-Sketch") in str(err.value)

    v2 = build(tpt, "ImageNetV2", LAYOUT="tpt")  # numbered folders: the bundled names as they are
    assert v2.classnames == list(IMAGENET_CLASSNAMES) and v2.num_classes == 1000

    full = tmp_path / "coop_sketch"  # a full ImageNet-Sketch (1000 wnid folders), as TPT's root has one
    write_imagenet_sketch(full, class_indices=range(1000), images_per_class=1, image_size=8)
    convert_to_tpt_layout(full, tpt, names=["ImageNetSketch"])
    for name, indices in (("ImageNetA", IMAGENET_A_CLASSES), ("ImageNetR", IMAGENET_R_CLASSES)):
        ours, coop = build(tpt, name, LAYOUT="tpt"), build(json_root, name)
        assert ours.classnames == coop.classnames == [IMAGENET_CLASSNAMES[i] for i in indices]
        assert [x.label for x in ours.test] == [x.label for x in coop.test]
    assert build(tpt, "ImageNetSketch", LAYOUT="tpt").classnames == list(IMAGENET_CLASSNAMES)
