"""Data side of the engine: Dassl-exact few-shot sampling, CoOp subsampling and splits, transforms,
loaders, the OxfordPets dataset on a synthetic tree, and the few-shot cache."""

from __future__ import annotations

import json
import os
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vlprompt.datasets  # noqa: F401 - registers the bundled datasets
from vlprompt.engine import data as engine_data
from vlprompt.engine.config import get_cfg_default
from vlprompt.engine.data import (
    DataManager,
    DatasetBase,
    DatasetWrapper,
    Datum,
    build_data_loader,
    build_transform,
    generate_fewshot_dataset,
    load_or_create_fewshot,
    subsample_classes,
)
from vlprompt.engine.evaluation import announce_skipped
from vlprompt.engine.registry import DATASET_REGISTRY
from vlprompt.splits import read_and_split_data, read_split, save_split, split_trainval
from vlprompt.synthetic_data import OXFORD_PETS_BREEDS, write_oxford_pets

COOP_TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Every test gets its own fallback cache, so nothing is written to ~/.cache."""
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "vlprompt_cache"))


@pytest.fixture(autouse=True)
def _no_pending_skip_count():
    """A loader pass under SKIP_CORRUPT_IMAGES leaves its count for the next result block; not another test's."""
    yield
    announce_skipped(None)


@pytest.fixture(scope="module")
def pets_master(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets_master")
    write_oxford_pets(root, with_split_json=True)
    return root


@pytest.fixture
def pets_root(pets_master, tmp_path):
    """A private copy of the 5-class × 12-image tree (with the split JSON)."""
    root = tmp_path / "data"
    shutil.copytree(pets_master, root)
    return root


def make_cfg(root, **overrides):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "OxfordPets"
    cfg.SEED = 1
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.TRANSFORMS = COOP_TRANSFORMS
    cfg.INPUT.PIXEL_MEAN = CLIP_MEAN
    cfg.INPUT.PIXEL_STD = CLIP_STD
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg


def build_pets(root, **overrides):
    cfg = make_cfg(root, **overrides)
    random.seed(cfg.SEED)
    return DATASET_REGISTRY.get("OxfordPets")(cfg)


# ------------------------------------------------------------------------------- few-shot sampling


def dassl_fewshot_reference(data_source, num_shots, repeat=False):
    """Dassl 0.6.3's per-label draw, written out independently: walk labels in first-seen order."""
    label_order, members = [], {}
    for item in data_source:
        if item.label not in members:
            label_order.append(item.label)
            members[item.label] = []
        members[item.label].append(item)
    picked = []
    for label in label_order:
        pool = members[label]
        if len(pool) >= num_shots:
            picked += random.sample(pool, num_shots)
        elif repeat:
            picked += random.choices(pool, k=num_shots)
        else:
            picked += pool
    return picked


def fake_items(counts, shuffle_seed=123):
    """Items with only ``label``/``impath`` (duck-typed Datum), labels interleaved in a shuffled order."""
    items = [SimpleNamespace(label=label, impath=f"c{label}_{i}.jpg", classname=f"c{label}") for label, n in enumerate(counts) for i in range(n)]
    random.Random(shuffle_seed).shuffle(items)
    return items


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 17])
@pytest.mark.parametrize("repeat", [False, True])
def test_fewshot_sampling_matches_dassl(seed, repeat):
    train = fake_items([9, 3, 16, 5, 1, 8])
    val = fake_items([4, 2, 6, 5, 3, 3], shuffle_seed=7)

    random.seed(seed)
    ours_train, ours_val = generate_fewshot_dataset(train, val, num_shots=4, repeat=repeat)
    after_ours = random.random()

    random.seed(seed)
    ref_train = dassl_fewshot_reference(train, 4, repeat)
    ref_val = dassl_fewshot_reference(val, 4, repeat)
    after_ref = random.random()

    assert [x.impath for x in ours_train] == [x.impath for x in ref_train]
    assert [x.impath for x in ours_val] == [x.impath for x in ref_val]
    assert after_ours == after_ref  # the global stream advanced exactly as Dassl's does
    expected = 6 * 4 if repeat else 4 + 3 + 4 + 4 + 1 + 4
    assert len(ours_train) == expected


def test_fewshot_single_source_and_disabled(capsys):
    items = fake_items([5, 5])
    random.seed(0)
    assert len(generate_fewshot_dataset(items, num_shots=2)) == 4
    assert "Creating a 2-shot dataset" in capsys.readouterr().out
    assert generate_fewshot_dataset(items, num_shots=-1) is items
    assert DatasetBase.split_dataset_by_label(items).keys() == {0, 1}


# --------------------------------------------------------------------------------------- subsample


def test_subsample_base_new_sizes_and_relabelling(tmp_path, capsys):
    img = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(img)
    train = [Datum(str(img), label=y, classname=f"c{y}") for y in range(37) for _ in range(2)]
    test = [Datum(str(img), label=y, classname=f"c{y}") for y in range(37)]

    base_train, base_test = subsample_classes(train, test, subsample="base")
    assert "SUBSAMPLE BASE CLASSES!" in capsys.readouterr().out
    assert sorted({x.label for x in base_train}) == list(range(19))  # ceil(37/2) = 19 (OxfordPets 19/18)
    assert len(base_test) == 19 and base_test[-1].classname == "c18"

    new_train, new_test = subsample_classes(train, test, subsample="new")
    assert "SUBSAMPLE NEW CLASSES!" in capsys.readouterr().out
    assert sorted({x.label for x in new_test}) == list(range(18))
    assert new_test[0].classname == "c19" and new_test[0].label == 0
    assert len(new_train) == 36

    # Labels come from the first split only: a class missing from train is dropped everywhere.
    partial = [x for x in train if x.label != 0]
    (kept_test,) = subsample_classes(partial, test[:], subsample="new")[1:]
    assert {x.classname for x in kept_test} == {f"c{y}" for y in range(19, 37)}
    assert subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ValueError, match="SUBSAMPLE_CLASSES"):
        subsample_classes(train, subsample="half")


def test_datasetbase_counts_and_classnames(tmp_path):
    img = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(img)
    train = [Datum(str(img), label=y, classname=n) for y, n in [(2, "c"), (0, "a"), (1, "b"), (0, "a")]]
    ds = DatasetBase(train_x=train, val=[], test=train)
    assert ds.num_classes == 3 and ds.classnames == ["a", "b", "c"]
    assert ds.lab2cname == {0: "a", 1: "b", 2: "c"}
    # Test-only datasets (empty train) take classes from test.
    assert DatasetBase(train_x=[], test=train).num_classes == 3


def test_datum_missing_file_names_path_and_folder(tmp_path):
    missing = tmp_path / "nowhere" / "cat_1.jpg"
    with pytest.raises(FileNotFoundError) as err:
        Datum(str(missing), label=0)
    assert str(missing) in str(err.value) and str(missing.parent) in str(err.value)
    assert "DATASET.ROOT" in str(err.value)


# -------------------------------------------------------------------------------------- transforms


def test_train_transform_prints_dassl_lines_and_shapes(capsys):
    cfg = make_cfg("/unused", **{"INPUT.SIZE": (224, 224)})
    tfm = build_transform(cfg, is_train=True)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_train",
        "+ random resized crop (size=(224, 224), scale=(0.08, 1.0))",
        "+ random flip",
        "+ to torch tensor of range [0, 1]",
        f"+ normalization (mean={CLIP_MEAN}, std={CLIP_STD})",
    ]
    out = tfm(Image.new("RGB", (300, 200), (255, 0, 0)))
    assert out.shape == (3, 224, 224)
    assert out[0].mean().item() == pytest.approx((1 - CLIP_MEAN[0]) / CLIP_STD[0], abs=1e-3)


def test_test_transform_resizes_short_side_and_center_crops(capsys):
    cfg = make_cfg("/unused", **{"INPUT.SIZE": (32, 32), "INPUT.TRANSFORMS": ("random_flip",)})
    tfm = build_transform(cfg, is_train=False)
    assert capsys.readouterr().out.splitlines() == [
        "Building transform_test",
        "+ resize the smaller edge to 32",
        "+ 32x32 center crop",
        "+ to torch tensor of range [0, 1]",
    ]
    # Left half black, right half white: a centre crop of the resized 48x32 image keeps both.
    img = Image.new("RGB", (96, 64), (0, 0, 0))
    img.paste((255, 255, 255), (48, 0, 96, 64))
    out = tfm(img)
    assert out.shape == (3, 32, 32) and out.min() >= 0 and out.max() <= 1  # no normalize requested
    assert out[:, :, :14].max() < 0.05 and out[:, :, 18:].min() > 0.95


def test_transform_variants_and_errors(capsys):
    cfg = make_cfg("/unused", **{"INPUT.TRANSFORMS": ("random_flip", "random_translation")})
    build_transform(cfg, is_train=True)
    assert capsys.readouterr().out.splitlines()[:3] == [
        "Building transform_train", "+ resize to 32x32", "+ random translation"
    ]
    tfm = build_transform(cfg, is_train=True, choices=["random_crop", "colorjitter", "randomgrayscale",
                                                       "gaussian_blur", "normalize"])
    lines = capsys.readouterr().out.splitlines()
    assert "+ random crop (padding = 4)" in lines
    assert "+ color jitter (brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)" in lines
    assert "+ gaussian blur (kernel=21)" in lines
    assert tfm(Image.new("RGB", (32, 32))).shape == (3, 32, 32)

    cfg.INPUT.NO_TRANSFORM = True
    assert build_transform(cfg) is None
    assert "Note: no transform is applied!" in capsys.readouterr().out
    cfg.INPUT.NO_TRANSFORM = False
    with pytest.raises(ValueError, match="random_rotate"):
        build_transform(cfg, choices=["random_rotate"])
    with pytest.raises(NotImplementedError, match="randaugment"):
        build_transform(cfg, choices=["randaugment"])
    cfg.INPUT.INTERPOLATION = "lanczos"
    with pytest.raises(ValueError, match="INPUT.INTERPOLATION"):
        build_transform(cfg)


# ------------------------------------------------------------------------------------------ loaders


def small_items(tmp_path, n, size=(40, 30)):
    items = []
    for i in range(n):
        path = tmp_path / f"img_{i}.png"
        Image.new("RGB", size, (i * 20 % 256, 100, 200)).save(path)
        items.append(Datum(str(path), label=i % 3, classname=f"c{i % 3}"))
    return items


def test_loader_drop_last_rule(tmp_path):
    cfg = make_cfg(tmp_path)
    items = small_items(tmp_path, 10)
    tfm = build_transform(cfg, is_train=False)
    train = build_data_loader(cfg, "RandomSampler", items, batch_size=4, tfm=tfm, is_train=True)
    assert train.drop_last and len(train) == 2
    tiny = build_data_loader(cfg, "RandomSampler", items[:3], batch_size=4, tfm=tfm, is_train=True)
    assert not tiny.drop_last and len(tiny) == 1  # a 3-image few-shot set still gives one batch
    test = build_data_loader(cfg, "SequentialSampler", items, batch_size=4, tfm=tfm, is_train=False)
    assert not test.drop_last and len(test) == 3
    assert test.pin_memory == torch.cuda.is_available()
    batch = next(iter(test))
    assert set(batch) == {"label", "domain", "impath", "index", "img"}
    assert batch["img"].shape == (4, 3, 32, 32) and batch["index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="Unknown sampler"):
        build_data_loader(cfg, "Shuffle", items, batch_size=4, tfm=tfm)
    with pytest.raises(NotImplementedError, match="RandomClassSampler"):
        build_data_loader(cfg, "RandomClassSampler", items, batch_size=4, tfm=tfm)


def test_wrapper_k_transforms_img0_and_transform_list(tmp_path):
    cfg = make_cfg(tmp_path, **{"DATALOADER.K_TRANSFORMS": 2, "DATALOADER.RETURN_IMG0": True})
    items = small_items(tmp_path, 2)
    tfm = build_transform(cfg, is_train=True)
    out = DatasetWrapper(cfg, items, transform=tfm, is_train=True)[1]
    assert isinstance(out["img"], list) and len(out["img"]) == 2 and out["img0"].shape == (3, 32, 32)
    assert DatasetWrapper(cfg, items, transform=tfm, is_train=False)[0]["img"].shape == (3, 32, 32)
    pair = DatasetWrapper(cfg, items, transform=[tfm, tfm], is_train=False)[0]
    assert pair["img"].shape == pair["img2"].shape == (3, 32, 32)
    assert isinstance(DatasetWrapper(cfg, items, transform=None)[0]["img"], Image.Image)


def _epoch(loader):
    return [(b["index"].tolist(), b["img"].sum().item()) for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_seeded_loading_is_reproducible(tmp_path, workers):
    cfg = make_cfg(tmp_path, **{"DATALOADER.NUM_WORKERS": workers})
    items = small_items(tmp_path, 12)
    tfm = build_transform(cfg, is_train=True, choices=["random_translation", "random_resized_crop", "random_flip"])
    loader = build_data_loader(cfg, "RandomSampler", items, batch_size=4, tfm=tfm, is_train=True)
    runs = []
    for _ in range(2):
        random.seed(5)
        torch.manual_seed(5)
        runs.append(_epoch(loader) + _epoch(loader))
    assert runs[0] == runs[1]
    assert runs[0][:3] != runs[0][3:]  # and the two epochs differ: it is random, just seeded


def test_unreadable_image_named_or_skipped(tmp_path):
    items = small_items(tmp_path, 3)
    with open(items[1].impath, "wb") as handle:
        handle.write(b"not an image")
    cfg = make_cfg(tmp_path)
    tfm = build_transform(cfg, is_train=False)
    with pytest.raises(OSError, match="img_1.png"):
        DatasetWrapper(cfg, items, transform=tfm)[1]

    # Skipped, never replaced by a neighbour: the item is None and its batch is one image shorter.
    cfg.DATALOADER.SKIP_CORRUPT_IMAGES = True
    wrapper = DatasetWrapper(cfg, items, transform=tfm)
    with pytest.warns(UserWarning, match="img_1.png"):
        assert wrapper[1] is None
    assert wrapper.num_skipped == 1 and wrapper.skipped_paths == [items[1].impath]
    loader = build_data_loader(cfg, "SequentialSampler", items, batch_size=4, tfm=tfm, is_train=False)
    with pytest.warns(UserWarning, match="img_1.png"):
        [batch] = list(loader)
    assert batch["index"].tolist() == [0, 2] and batch["impath"] == [items[0].impath, items[2].impath]
    assert batch["label"].tolist() == [items[0].label, items[2].label] and batch["img"].shape[0] == 2
    only_bad = build_data_loader(cfg, "SequentialSampler", items[1:2], batch_size=4, tfm=tfm, is_train=False)
    with pytest.warns(UserWarning, match="img_1.png"):
        assert list(only_bad) == []  # a batch with no readable image is left out


# ---------------------------------------------------------------------------------------- OxfordPets


def test_oxford_pets_with_split_json(pets_root, capsys):
    ds = build_pets(pets_root)
    out = capsys.readouterr().out
    assert f"Reading split from {pets_root / 'oxford_pets' / 'split_zhou_OxfordPets.json'}" in out
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (30, 10, 20)
    assert ds.classnames == ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle"]
    assert ds.num_classes == 5

    two_shot = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2})
    assert (len(two_shot.train_x), len(two_shot.val), len(two_shot.test)) == (10, 10, 20)
    base = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2, "DATASET.SUBSAMPLE_CLASSES": "base"})
    assert base.classnames == ds.classnames[:3] and len(base.test) == 12
    new = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2, "DATASET.SUBSAMPLE_CLASSES": "new"})
    assert new.classnames == ds.classnames[3:] and len(new.test) == 8


def coop_split_trainval_reference(trainval):
    """CoOp's 80/20 split, written out independently (index lists per label, shuffled)."""
    order, groups = [], {}
    for index, item in enumerate(trainval):
        groups.setdefault(item.label, []).append(index)
        if item.label not in order:
            order.append(item.label)
    train, val = [], []
    for label in order:
        idxs = groups[label]
        n_val = round(len(idxs) * 0.2)
        random.shuffle(idxs)
        val += [trainval[i] for i in idxs[:n_val]]
        train += [trainval[i] for i in idxs[n_val:]]
    return train, val


def test_oxford_pets_from_annotations(pets_root, capsys):
    split_path = pets_root / "oxford_pets" / "split_zhou_OxfordPets.json"
    split_path.unlink()
    ds = build_pets(pets_root, SEED=3)
    out = capsys.readouterr().out
    assert "Splitting trainval into 80% train and 20% val" in out and f"Saved split to {split_path}" in out
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (30, 10, 20)
    assert ds.classnames[2] == "american_pit_bull_terrier"
    assert {x.label for x in ds.test} == set(range(5))

    # Same draw as CoOp's algorithm on the annotation order.
    trainval = ds.read_data("trainval.txt")
    random.seed(3)
    ref_train, ref_val = coop_split_trainval_reference(trainval)
    assert [x.impath for x in ds.train_x] == [x.impath for x in ref_train]
    assert [x.impath for x in ds.val] == [x.impath for x in ref_val]

    saved = json.loads(split_path.read_text())
    assert saved["train"][0] == [os.path.basename(ds.train_x[0].impath), ds.train_x[0].label, ds.train_x[0].classname]
    assert split_path.read_text().startswith('{\n    "train": [\n        [\n')  # indent=4 like CoOp
    assert read_split(str(split_path), str(pets_root / "oxford_pets" / "images"))[2] == ds.test


def test_synthetic_pets_layout(tmp_path):
    dataset_dir = write_oxford_pets(tmp_path, num_classes=7, images_per_class=6, with_split_json=False, seed=4)
    assert dataset_dir == tmp_path / "oxford_pets"
    lines = (dataset_dir / "annotations" / "trainval.txt").read_text().splitlines()
    assert lines[0] == "Abyssinian_1 1 1 1" and "Bengal_1 6 1 2" in lines and "Birman_1 7 1 3" in lines
    assert "beagle_1 5 2 4" in lines
    assert len((dataset_dir / "annotations" / "test.txt").read_text().splitlines()) == 7 * 2
    assert not (dataset_dir / "split_zhou_OxfordPets.json").exists()
    assert len(OXFORD_PETS_BREEDS) == 37 and OXFORD_PETS_BREEDS[9] == "British_Shorthair"
    # Deterministic per seed, and classes look different (mean colour) while images of a class agree.
    again = write_oxford_pets(tmp_path / "again", num_classes=7, images_per_class=6, with_split_json=False, seed=4)
    a = (dataset_dir / "images" / "Bengal_3.jpg").read_bytes()
    assert a == (again / "images" / "Bengal_3.jpg").read_bytes()

    def mean_colour(name):
        with Image.open(dataset_dir / "images" / name) as img:
            return torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(-1, 3)).mean(0)

    same = (mean_colour("Abyssinian_1.jpg") - mean_colour("Abyssinian_2.jpg")).abs().max()
    other = (mean_colour("Abyssinian_1.jpg") - mean_colour("basset_hound_1.jpg")).abs().max()
    assert other > 5 * same


def test_missing_image_error_names_path_and_split(pets_root):
    victim = pets_root / "oxford_pets" / "images" / "beagle_3.jpg"
    victim.unlink()
    with pytest.raises(FileNotFoundError) as err:
        build_pets(pets_root)
    assert str(victim) in str(err.value) and "split_zhou_OxfordPets.json" in str(err.value)


def test_dataset_root_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'DATASET.ROOT ".*missing" does not exist'):
        build_pets(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="annotations"):
        build_pets(tmp_path / "empty")
    with pytest.raises(ValueError, match="DATASET.ROOT"):
        build_pets("")


# ---------------------------------------------------------------------------------- few-shot cache


def fewshot_names(ds):
    return [os.path.relpath(x.impath, ds.dataset_dir) for x in ds.train_x + ds.val]


def test_fewshot_cache_is_written_then_loaded(pets_root, capsys):
    first = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2})
    out = capsys.readouterr().out
    assert out.count("Creating a 2-shot dataset") == 2 and "Saving preprocessed few-shot data to" in out
    files = list((pets_root / "oxford_pets" / "split_fewshot").iterdir())
    assert len(files) == 1 and files[0].name.startswith("shot_2-seed_1-") and files[0].suffix == ".json"
    cached = json.loads(files[0].read_text())
    assert not any(os.path.isabs(row[0]) for row in cached["train"])  # relative: the root can move

    random.seed(99)
    second = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2})
    assert f"Loading preprocessed few-shot data from {files[0]}" in capsys.readouterr().out
    assert fewshot_names(second) == fewshot_names(first)

    # A moved data root reuses the cache with paths under the new root.
    moved = pets_root.parent / "moved"
    shutil.move(str(pets_root), str(moved))
    third = build_pets(moved, **{"DATASET.NUM_SHOTS": 2})
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert fewshot_names(third) == fewshot_names(first)
    assert third.train_x[0].impath.startswith(str(moved))


def test_fewshot_selection_changes_with_seed(pets_root):
    one = fewshot_names(build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2}))
    two = fewshot_names(build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2, "SEED": 2}))
    assert one != two
    assert len(list((pets_root / "oxford_pets" / "split_fewshot").iterdir())) == 2


def test_fewshot_cache_falls_back_when_dataset_dir_read_only(pets_root, tmp_path, monkeypatch, capsys):
    reference = fewshot_names(build_pets(pets_root, **{"DATASET.NUM_SHOTS": 4}))
    shutil.rmtree(pets_root / "oxford_pets" / "split_fewshot")

    dataset_dir = str(pets_root / "oxford_pets")
    real_probe = engine_data._dir_is_writable
    # Root ignores permission bits, so the probe is told about the read-only folder as well.
    monkeypatch.setattr(engine_data, "_dir_is_writable", lambda d: not d.startswith(dataset_dir) and real_probe(d))
    os.chmod(dataset_dir, 0o555)
    try:
        fallback = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 4})
        again = build_pets(pets_root, **{"DATASET.NUM_SHOTS": 4})
    finally:
        os.chmod(dataset_dir, 0o755)
    out = capsys.readouterr().out
    cache_dir = tmp_path / "vlprompt_cache" / "oxford_pets" / "split_fewshot"
    assert f"Saving preprocessed few-shot data to {cache_dir}" in out
    assert f"Loading preprocessed few-shot data from {cache_dir}" in out
    assert not (pets_root / "oxford_pets" / "split_fewshot").exists()
    assert fewshot_names(fallback) == fewshot_names(again) == reference  # location does not change content


def test_fewshot_cache_is_not_reused_after_split_changes(pets_root, capsys):
    build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2})
    split_path = pets_root / "oxford_pets" / "split_zhou_OxfordPets.json"
    split = json.loads(split_path.read_text())
    split["train"] = split["train"][1:]  # drop one training image
    split_path.write_text(json.dumps(split))
    capsys.readouterr()

    build_pets(pets_root, **{"DATASET.NUM_SHOTS": 2})
    out = capsys.readouterr().out
    assert "Creating a 2-shot dataset" in out and "Loading preprocessed" not in out
    assert len(list((pets_root / "oxford_pets" / "split_fewshot").iterdir())) == 2


def test_corrupt_cache_file_is_rebuilt(tmp_path, capsys):
    items = small_items(tmp_path, 9)
    random.seed(0)
    train, _ = load_or_create_fewshot(str(tmp_path), "toy", items, items, 2, 0)
    (cache_file,) = (tmp_path / "split_fewshot").iterdir()
    cache_file.write_text("{ truncated")
    random.seed(0)
    with pytest.warns(UserWarning, match="unreadable few-shot cache"):
        rebuilt, _ = load_or_create_fewshot(str(tmp_path), "toy", items, items, 2, 0)
    assert rebuilt == train
    assert json.loads(cache_file.read_text())["num_shots"] == 2


# ------------------------------------------------------------------------------------------ splits


def test_split_trainval_counts_and_errors():
    items = fake_items([10, 5, 3])
    random.seed(0)
    train, val = split_trainval(items)
    val_counts = [sum(x.label == y for x in val) for y in range(3)]
    assert val_counts == [2, 1, 1] and len(train) == 18 - 4
    with pytest.raises(ValueError, match="too few"):
        split_trainval(fake_items([2]))


def test_read_and_split_data_and_roundtrip(tmp_path, capsys):
    image_dir = tmp_path / "images"
    for folder, n in [("zebra", 10), ("Ant", 4), ("BACKGROUND", 5), ("cat", 7)]:
        (image_dir / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4)).save(image_dir / folder / f"{i}.jpg")
    (image_dir / ".hidden").mkdir()
    random.seed(0)
    train, val, test = read_and_split_data(str(image_dir), ignored=["BACKGROUND"], new_cnames={"Ant": "ant"})
    assert "Splitting into 50% train, 20% val, and 30% test" in capsys.readouterr().out
    # Sorted folders (upper case first): Ant=0, cat=1, zebra=2; n=4 → 2/1/1, n=7 → 4/1/2, n=10 → 5/2/3.
    assert [sum(x.label == y for x in train) for y in range(3)] == [2, 4, 5]
    assert [sum(x.label == y for x in val) for y in range(3)] == [1, 1, 2]
    assert [sum(x.label == y for x in test) for y in range(3)] == [1, 2, 3]
    assert {x.classname for x in train} == {"ant", "cat", "zebra"}

    split_file = tmp_path / "split.json"
    save_split(train, val, test, str(split_file), str(image_dir))
    rows = json.loads(split_file.read_text())
    assert rows["test"][0][0].count("/") == 1 and not rows["test"][0][0].startswith("/")
    assert read_split(str(split_file), str(image_dir)) == (train, val, test)

    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_split(str(tmp_path / "nope.json"), str(image_dir))
    split_file.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(ValueError, match='no "test"'):
        read_split(str(split_file), str(image_dir))
    (image_dir / "tiny").mkdir()
    for i in range(3):  # 3 images: round(1.5) = 2 train, round(0.6) = 1 val, nothing left for test
        Image.new("RGB", (4, 4)).save(image_dir / "tiny" / f"{i}.jpg")
    with pytest.raises(ValueError, match="tiny"):
        read_and_split_data(str(image_dir))


# ------------------------------------------------------------------------------------- DataManager


def test_data_manager_loaders_and_summary(pets_root, capsys):
    cfg = make_cfg(pets_root, **{"DATASET.NUM_SHOTS": 2})
    random.seed(cfg.SEED)
    dm = DataManager(cfg)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Loading dataset: OxfordPets"
    assert lines.index("Building transform_train") < lines.index("Building transform_test")
    table = lines[-7:]
    assert table[0] == table[-1] and set(table[0]) == {"-", " "}
    assert [line.split() for line in table[1:-1]] == [
        ["Dataset", "OxfordPets"], ["#", "classes", "5"], ["#", "train_x", "10"], ["#", "val", "10"],
        ["#", "test", "20"],
    ]
    assert dm.num_classes == 5 and dm.num_source_domains == 0 and dm.lab2cname[4] == "beagle"
    assert dm.train_loader_u is None
    assert len(dm.train_loader_x) == 2 and len(dm.val_loader) == 2 and len(dm.test_loader) == 3
    batch = next(iter(dm.train_loader_x))
    assert batch["img"].shape == (4, 3, 32, 32) and batch["label"].dtype == torch.int64


@DATASET_REGISTRY.register(force=True)
class _TestOnlyToy(DatasetBase):
    """A test-only dataset: no training data at all."""

    def __init__(self, cfg):
        image = os.path.join(cfg.DATASET.ROOT, "only.png")
        Image.new("RGB", (8, 8)).save(image)
        test = [Datum(image, label=y, classname=f"c{y}") for y in range(3)]
        super().__init__(train_x=[], val=[], test=test)


def test_data_manager_test_only_dataset(tmp_path, capsys):
    cfg = make_cfg(tmp_path, **{"DATASET.NAME": "_TestOnlyToy"})
    dm = DataManager(cfg)
    assert dm.train_loader_x is None and dm.val_loader is None
    assert dm.num_classes == 3 and len(dm.test_loader.dataset) == 3
    assert "# train_x  0" in capsys.readouterr().out
    cfg.DATASET.NAME = "OxfordPet"
    with pytest.raises(KeyError, match="OxfordPets"):
        DataManager(cfg)
