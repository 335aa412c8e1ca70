"""The toy world and the micro CLIP: generator, on-disk layout, bundled weights, the pretraining
script's determinism, and learning that shows (zero-shot well above chance, CoOp beating a poor
hand-crafted prompt, base-to-new from real numbers).

The margins come from measured runs with these seeds (numbers in each test's comment) and leave
slack; the data are a reduced world written once per session.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, train_args

from vlprompt.toyworld.datasets import (
    dataset_specs,
    novel_classes,
    render_dataset_image,
    world_classes,
    write_toyworld,
)
from vlprompt.toyworld.world import (
    COLOURS,
    PATTERNS,
    SHAPES,
    ToyClass,
    all_combinations,
    held_out_combinations,
    is_held_out,
    seen_combinations,
)

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "100"]
PRETRAIN_SCRIPT = REPO_ROOT / "scripts" / "toyworld" / "pretrain_micro_clip.py"
# The reduced world of these tests: the datasets they use, few images per class.
TEST_WORLD = {"names": ["ToyWorld", "ToyWorldSketch", "ToyWorldA", "ToyWorldNovel", "ToyWorldPatterns"],
              "train_per_class": 8, "val_per_class": 1, "test_per_class": 8}


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> str:
    """A reduced toy world (treat as read-only)."""
    root = tmp_path_factory.mktemp("toyworld")
    write_toyworld(root, **TEST_WORLD)
    return str(root)


def accuracy_of(trainer) -> float:
    return float(trainer.test_results["accuracy"])


# ----------------------------------------------------------------------------------------- the world


def test_classes_and_held_out_rule():
    combos = all_combinations()
    assert len(combos) == len(COLOURS) * len(PATTERNS) * len(SHAPES) == 144
    held = held_out_combinations()
    assert len(held) == 36 and len(seen_combinations()) == 108
    assert set(held).isdisjoint(seen_combinations())
    # Every pair of attribute values still occurs in pretraining: only the exact triples are new.
    for first, second in itertools.combinations(("colour", "pattern", "shape"), 2):
        seen_pairs = {(getattr(c, first), getattr(c, second)) for c in seen_combinations()}
        all_pairs = {(getattr(c, first), getattr(c, second)) for c in combos}
        assert seen_pairs == all_pairs, (first, second)
    # One held-out pattern per (colour, shape).
    for colour, shape in itertools.product(COLOURS, SHAPES):
        assert sum(is_held_out(ToyClass(colour, p, shape)) for p in PATTERNS) == 1
    assert ToyClass("red", "striped", "circle").name == "red striped circle"
    assert ToyClass("red", "striped", "circle").folder == "red_striped_circle"
    assert ToyClass(pattern="striped").matches(ToyClass("blue", "striped", "star"))
    with pytest.raises(ValueError, match="colour"):
        ToyClass("teal", "plain", "circle")


def test_dataset_specs_novel_variant_puts_base_first():
    specs = dataset_specs()
    assert set(specs) == {"ToyWorld", "ToyWorldSketch", "ToyWorldR", "ToyWorldA", "ToyWorldNovel",
                          "ToyWorldPatterns"}
    main = specs["ToyWorld"].classes
    assert len(main) == 24 and all(not is_held_out(c) for c in main)
    assert all(specs[name].classes == main for name in ("ToyWorldSketch", "ToyWorldR", "ToyWorldA"))
    novel = specs["ToyWorldNovel"].classes
    assert novel[:24] == main and all(is_held_out(c) for c in novel[24:]) and len(set(novel)) == 48
    assert [c.name for c in specs["ToyWorldPatterns"].classes] == list(PATTERNS)
    assert world_classes(0) == list(main) and world_classes(1) != world_classes(0)
    assert novel_classes(0) == list(novel[24:])


def test_rendering_is_deterministic_and_domains_differ():
    spec = dataset_specs()["ToyWorld"]
    first = render_dataset_image(spec, 3, 5)
    assert first.shape == (56, 56, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_dataset_image(spec, 3, 5))
    assert not np.array_equal(first, render_dataset_image(spec, 3, 6))
    means = {}
    for name in ("ToyWorld", "ToyWorldSketch", "ToyWorldR", "ToyWorldA"):
        images = [render_dataset_image(dataset_specs()[name], label, 0) for label in range(6)]
        means[name] = float(np.mean(images))
    # Sketches are lines on paper, renditions sit on dark backgrounds, photos in between.
    assert means["ToyWorldSketch"] > means["ToyWorld"] > means["ToyWorldR"]
    assert means["ToyWorldSketch"] > 220 and means["ToyWorldR"] < 110


def test_partial_classes_draw_matching_pretrained_combinations():
    spec = dataset_specs()["ToyWorldPatterns"]
    plain = np.stack([render_dataset_image(spec, 0, i) for i in range(4)])
    striped = np.stack([render_dataset_image(spec, 1, i) for i in range(4)])
    assert not np.array_equal(plain, striped)


# ---------------------------------------------------------------------------------------- the layout


def test_layout_split_json_and_world_marker(toy_root):
    world = Path(toy_root) / "toyworld"
    record = json.loads((world / "world.json").read_text())
    assert set(record["datasets"]) == set(TEST_WORLD["names"])
    split = json.loads((world / "patterns" / "split_zhou_ToyWorldPatterns.json").read_text())
    assert [len(split[key]) for key in ("train", "val", "test")] == [4 * 8, 4 * 1, 4 * 8]
    relpath, label, classname = split["train"][0]
    assert (relpath, label, classname) == ("plain/plain_1.png", 0, "plain")
    assert (world / "patterns" / "images" / relpath).is_file()
    novel = json.loads((world / "novel" / "split_zhou_ToyWorldNovel.json").read_text())
    assert {row[1] for row in novel["test"]} == set(range(48))


def test_writer_skips_an_identical_world_and_rewrites_a_changed_one(tmp_path):
    args = {"names": ["ToyWorldPatterns"], "train_per_class": 1, "val_per_class": 1, "test_per_class": 1}
    world = write_toyworld(tmp_path, **args)
    marker = world / "world.json"
    image = world / "patterns" / "images" / "plain" / "plain_1.png"
    stamp = (marker.stat().st_mtime_ns, image.stat().st_mtime_ns)
    write_toyworld(tmp_path, **args)
    assert (marker.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamp
    write_toyworld(tmp_path, **dict(args, test_per_class=2))
    assert json.loads(marker.read_text())["datasets"]["ToyWorldPatterns"]["per_class"]["test"] == 2
    assert (world / "patterns" / "images" / "plain" / "plain_3.png").is_file()
    with pytest.raises(ValueError, match="ToyWorldX"):
        write_toyworld(tmp_path, names=["ToyWorldX"])


def test_registered_datasets_read_the_layout_with_base_and_new(toy_root, tmp_path):
    from vlprompt.cli import build_parser, setup_cfg
    from vlprompt.engine.data import build_dataset

    def dataset(name: str, *opts: str):
        stem = {"ToyWorld": "toyworld", "ToyWorldNovel": "toyworld_novel", "ToyWorldA": "toyworld_a"}[name]
        args = build_parser().parse_args(train_args(toy_root, tmp_path, "ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml",
                                                    *opts, dataset=stem))
        return build_dataset(setup_cfg(args))

    main = dataset("ToyWorld")
    assert main.classnames == [c.name for c in world_classes()] and len(main.test) == 24 * 8
    assert dataset("ToyWorldA").classnames == main.classnames
    base = dataset("ToyWorldNovel", "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "2")
    new = dataset("ToyWorldNovel", "DATASET.SUBSAMPLE_CLASSES", "new")
    assert base.classnames == main.classnames and len(base.train_x) == 24 * 2
    assert new.classnames == [c.name for c in novel_classes()] and len(new.test) == 24 * 8


def test_missing_world_error_says_how_to_write_it(tmp_path):
    from vlprompt.cli import main

    with pytest.raises(FileNotFoundError, match="python -m vlprompt.toyworld --root"):
        main(train_args(str(tmp_path), tmp_path / "out", "ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml", "--eval-only",
                        "MODEL.BACKBONE.NAME", "micro-clip", *FAST, dataset="toyworld"))


# ------------------------------------------------------------------------------------ the micro CLIP


def test_bundled_micro_clip_resolves_and_fits_the_coop_yamls():
    from vlprompt.clip_backbone import load_clip, resolve_clip_weights
    from vlprompt.toyworld.micro_clip import METADATA_PATH, WEIGHTS_PATH, caption_token_ids

    assert resolve_clip_weights("micro-clip") == WEIGHTS_PATH
    assert WEIGHTS_PATH.stat().st_size < 8_000_000
    record = json.loads(METADATA_PATH.read_text())
    assert record["sha256"] == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    model = load_clip("micro-clip")
    assert type(model.visual).__name__ == "ModifiedResNet" and model.visual.input_resolution == 224
    assert model.token_embedding.weight.shape == (49408, 64) and model.context_length == 77
    # Only the rows of caption words were trained; the rest are zero (what keeps the file small in git).
    rows = model.token_embedding.weight.detach().abs().sum(1) > 0
    assert set(torch.nonzero(rows).flatten().tolist()) == set(caption_token_ids())


def test_batched_resize_matches_the_engine_test_transform():
    from PIL import Image
    from torchvision import transforms as T

    from vlprompt.toyworld.micro_clip import PIXEL_MEAN, PIXEL_STD, images_to_tensor

    images = np.stack([render_dataset_image(dataset_specs()["ToyWorld"], label, 0) for label in range(4)])
    reference = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(PIXEL_MEAN, PIXEL_STD)])
    expected = torch.stack([reference(Image.fromarray(image)) for image in images])
    batched = images_to_tensor(images)
    grey_level = 1 / 255 / min(PIXEL_STD)
    assert batched.shape == expected.shape == (4, 3, 224, 224)
    assert (batched - expected).abs().max() <= 1.01 * grey_level  # rounding only
    assert (batched - expected).abs().mean() < 0.05 * grey_level


def test_pretrain_script_steps_are_deterministic(tmp_path):
    script = runpy.run_path(str(PRETRAIN_SCRIPT), run_name="pretrain_under_test")
    args = ["--steps", "2", "--pool-size", "24", "--batch-size", "12", "--refresh", "4", "--log-every", "0"]
    first = script["main"]([*args, "--out", str(tmp_path / "a.pt")])
    second = script["main"]([*args, "--out", str(tmp_path / "b.pt")])
    assert first["sha256"] == second["sha256"] and first["first_losses"] == second["first_losses"]
    assert len(first["first_losses"]) == 2 and all(np.isfinite(first["first_losses"]))
    a = torch.load(tmp_path / "a.pt", weights_only=True)
    untrained = script["build_micro_clip"](0).state_dict()
    assert not torch.equal(a["visual.conv1.weight"].float(), untrained["visual.conv1.weight"].half().float())
    other = script["main"]([*args, "--seed", "1", "--out", str(tmp_path / "c.pt")])
    assert other["sha256"] != first["sha256"]


# ---------------------------------------------------------------------------------- learning margins


def run_train(root: str, out: Path, trainer: str, config: str, dataset: str, *opts: str, flags: tuple = ()):
    from vlprompt.cli import main

    return main(train_args(root, out, trainer, config, *flags, "--seed", "1", "MODEL.BACKBONE.NAME", "micro-clip",
                           *FAST, *opts, dataset=dataset))


def zero_shot(root: str, out: Path, dataset: str, *opts: str) -> float:
    return accuracy_of(run_train(root, out, "ZeroshotCLIP", "trainers/CoOp/vit_b16.yaml", dataset, *opts,
                                 flags=("--eval-only",)))


def test_zero_shot_is_far_above_chance_on_photos_and_drops_under_shift(toy_root, tmp_path):
    # Measured: photo 78.6%, adversarial 54.7%, sketch 13.0% (chance 4.2%).
    photo = zero_shot(toy_root, tmp_path / "photo", "toyworld")
    adversarial = zero_shot(toy_root, tmp_path / "a", "toyworld_a")
    sketch = zero_shot(toy_root, tmp_path / "sketch", "toyworld_sketch")
    print(f"zero-shot: photo {photo:.1f} adversarial {adversarial:.1f} sketch {sketch:.1f}")
    assert photo > 60.0  # > 14 × chance
    assert photo > adversarial + 10 and adversarial > sketch + 20


def test_coop_few_shots_beats_a_poor_hand_crafted_prompt(toy_root, tmp_path):
    """On sketches "a photo of a {}." is a poor prompt; 4 shots of class-specific context fix much of it."""
    # Measured: zero-shot 13.0%, CoOp 4 shots 48.4%.
    before = zero_shot(toy_root, tmp_path / "zs", "toyworld_sketch")
    coop = run_train(toy_root, tmp_path / "coop", "CoOp", "trainers/CoOp/vit_b16_ep100.yaml", "toyworld_sketch",
                     "DATASET.NUM_SHOTS", "4", "TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CSC", "True",
                     "OPTIM.LR", "0.02", "OPTIM.MAX_EPOCH", "60", "INPUT.TRANSFORMS", "['normalize']")
    after = accuracy_of(coop)
    print(f"sketch: zero-shot {before:.1f} CoOp {after:.1f}")
    assert after > before + 15


def test_tpt_improves_over_zero_shot_on_the_adversarial_domain(toy_root, tmp_path):
    # Measured: 0 steps (zero-shot with TPT's own prompt) 54.69%, one step per image 55.73% (+2 of 192 images).
    opts = ("TRAINER.TPT.PREC", "fp32", "TRAINER.TPT.AUG", "crop", "TRAINER.TPT.BATCH_IMAGES", "8",
            "TRAINER.TPT.N_VIEWS", "32")
    untuned = run_train(toy_root, tmp_path / "steps0", "TPT", "trainers/TPT/vit_b16.yaml", "toyworld_a", *opts,
                        "TRAINER.TPT.STEPS", "0", "TRAINER.TPT.N_VIEWS", "1")
    tuned = run_train(toy_root, tmp_path / "tpt", "TPT", "trainers/TPT/vit_b16.yaml", "toyworld_a", *opts)
    before, after = accuracy_of(untuned), accuracy_of(tuned)
    print(f"adversarial: untuned {before:.2f} TPT {after:.2f}")
    assert before == pytest.approx(zero_shot(toy_root, tmp_path / "zs", "toyworld_a"))
    assert after > before


def test_base_to_new_harmonic_mean_comes_from_the_runs(toy_root, tmp_path):
    from vlprompt.results import base2new_table, collect_runs, harmonic_mean
    from vlprompt.run_record import read_run_record

    train_dir = tmp_path / "train_base"
    opts = ("DATASET.NUM_SHOTS", "2", "TRAINER.COCOOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "1")
    config = "trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
    base = accuracy_of(run_train(toy_root, train_dir, "CoCoOp", config, "toyworld_novel", *opts,
                                 "DATASET.SUBSAMPLE_CLASSES", "base"))
    new = accuracy_of(run_train(toy_root, tmp_path / "test_new", "CoCoOp", config, "toyworld_novel", *opts,
                                "DATASET.SUBSAMPLE_CLASSES", "new",
                                flags=("--eval-only", "--model-dir", str(train_dir), "--load-epoch", "1")))
    print(f"base {base:.1f} new {new:.1f}")
    # Measured: base 81.2%, new 80.2% (chance 4.2%): the new classes are combinations never seen in pretraining.
    assert base > 50 and new > 50
    assert read_run_record(tmp_path / "test_new")["protocol"] == "base2new_test_new"
    table = base2new_table(collect_runs([str(tmp_path)]).runs)
    (dataset, method), (base_cell, new_cell, h_cell) = table.rows[0]
    assert (dataset, method) == ("ToyWorldNovel", "CoCoOp")
    assert (base_cell.mean, new_cell.mean) == (pytest.approx(base), pytest.approx(new))
    assert h_cell.mean == pytest.approx(harmonic_mean(base, new)) == pytest.approx(2 * base * new / (base + new))


def test_genpt_generalises_beyond_zero_shot_on_base_and_new(toy_root, tmp_path):
    """GenPT's point is generalisation: with its shipped defaults (the demo's 4 shots, 5 epochs) it beats
    zero-shot CLIP's harmonic mean of base and new accuracy on ToyWorldNovel."""
    from vlprompt.results import harmonic_mean

    config = "trainers/GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml"
    opts = ("DATASET.NUM_SHOTS", "4", "TRAINER.GENPT.PREC", "fp32", "OPTIM.MAX_EPOCH", "5")
    train_dir = tmp_path / "train_base"
    base = accuracy_of(run_train(toy_root, train_dir, "GenPT", config, "toyworld_novel", *opts,
                                 "DATASET.SUBSAMPLE_CLASSES", "base"))
    new = accuracy_of(run_train(toy_root, tmp_path / "test_new", "GenPT", config, "toyworld_novel", *opts,
                                "DATASET.SUBSAMPLE_CLASSES", "new",
                                flags=("--eval-only", "--model-dir", str(train_dir), "--load-epoch", "5")))
    zs_base = zero_shot(toy_root, tmp_path / "zs_base", "toyworld_novel", "DATASET.SUBSAMPLE_CLASSES", "base")
    zs_new = zero_shot(toy_root, tmp_path / "zs_new", "toyworld_novel", "DATASET.SUBSAMPLE_CLASSES", "new")
    h_genpt, h_zs = harmonic_mean(base, new), harmonic_mean(zs_base, zs_new)
    print(f"H: zero-shot {h_zs:.2f} ({zs_base:.2f}/{zs_new:.2f}) GenPT {h_genpt:.2f} ({base:.2f}/{new:.2f})")
    # Measured: zero-shot 81.25/80.21 (H 80.73), GenPT 82.81/81.25 (H 82.02; CoOp, the same training with
    # both GenPT terms off, 81.25/80.21). One image of 192 is 0.52 points; the margin is about half the gain.
    assert h_genpt > h_zs + 0.6
    assert base > zs_base and new > zs_new


def test_demo_runs_every_step_and_prints_the_tables(tmp_path, capsys, monkeypatch):
    """The README's demo on a reduced world (the full one is the same code with more images)."""
    from vlprompt import demo, toyworld

    small = {"train_per_class": 4, "val_per_class": 1, "test_per_class": 2}
    real_writer = toyworld.write_toyworld
    monkeypatch.setattr(toyworld, "write_toyworld", lambda root: real_writer(root, **small))
    monkeypatch.setattr(demo, "TPT_OPTS", [*demo.TPT_OPTS, "TRAINER.TPT.N_VIEWS", "4"])
    monkeypatch.setattr(demo, "COOP_CFG", "trainers/CoOp/vit_b16_ep50.yaml")
    runs = demo.main(["--workdir", str(tmp_path), "--shots", "2"])
    printed = capsys.readouterr().out
    assert [(r.method, r.dataset, r.classes) for r in runs] == [
        ("ZeroshotCLIP", "ToyWorld", "all"), ("ZeroshotCLIP", "ToyWorldSketch", "all"),
        ("ZeroshotCLIP", "ToyWorldR", "all"), ("ZeroshotCLIP", "ToyWorldA", "all"),
        ("LinearProbeCLIP", "ToyWorldSketch", "all"), ("CoOp", "ToyWorldSketch", "all"),
        ("ZeroshotCLIP", "ToyWorldNovel", "base"), ("ZeroshotCLIP", "ToyWorldNovel", "new"),
        ("CoCoOp", "ToyWorldNovel", "base"), ("CoCoOp", "ToyWorldNovel", "new"),
        ("GenPT", "ToyWorldNovel", "base"), ("GenPT", "ToyWorldNovel", "new"),
        ("TPT", "ToyWorldA", "all"),
    ]
    for title in ("Few-shot accuracy", "Base-to-new generalisation", "Test-time prompt tuning (%): ToyWorld"):
        assert title in printed
    coop = next(r for r in runs if r.method == "CoOp")
    assert f"| {coop.accuracy:.2f} (1) |" in printed
