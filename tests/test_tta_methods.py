"""C-TPT, Zero, MTA and TDA through train.py on the test-time harness: results with ECE, predictions.csv,
run records, per-dataset views, resume (TDA's caches included) and shards (TDA's replayed as one stream)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import config_file

from vlprompt.cli import main
from vlprompt.errors import UserError
from vlprompt.tiny_clip import save_tiny_clip
from vlprompt.tta import merge as tta_merge
from vlprompt.tta.records import SHARD_ENV
from vlprompt.tta.tda import TDACaches

RES = 64
CONFIGS = {"CTPT": "CTPT", "Zero": "ZERO", "MTA": "MTA", "TDA": "TDA", "TPT": "TPT"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny64(tmp_path_factory) -> str:
    return str(save_tiny_clip(tmp_path_factory.mktemp("tiny64") / "vit.pt", "vit", image_resolution=RES))


def run_args(trainer: str, root: str, out, weights: str, *extra: str, seed: str = "1") -> list[str]:
    node = CONFIGS[trainer]
    return ["--root", root, "--trainer", trainer, "--config-file", config_file(f"trainers/{trainer}/vit_b16.yaml"),
            "--dataset-config-file", config_file("datasets/oxford_pets.yaml"), "--output-dir", str(out),
            "--seed", seed, "MODEL.BACKBONE.NAME", weights, "DATALOADER.NUM_WORKERS", "0", "INPUT.SIZE",
            f"({RES}, {RES})", f"TRAINER.{node}.N_VIEWS", "8", f"TRAINER.{node}.PRINT_FREQ", "5", *extra]


def log_rows(out, name: str = "OxfordPets", shard: str = "") -> tuple[dict, list[dict]]:
    lines = (Path(out) / "tpt_predictions" / f"{name}{shard}.jsonl").read_text().splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def predictions(rows: list[dict]) -> list[tuple]:
    """(image, top-5, confidence) by image."""
    return sorted((r["i"], r["top5"], round(r["p"], 12)) for r in rows)


def ece_by_hand(predictions: list[tuple[float, bool]], n_bins: int = 15) -> float:
    """ECE in % over ``n_bins`` equal-width bins (lower < confidence <= upper), written out plainly."""
    total = 0.0
    for b in range(n_bins):
        inside = [(c, ok) for c, ok in predictions if b / n_bins < c <= (b + 1) / n_bins]
        if inside:
            gap = sum(ok for _, ok in inside) / len(inside) - sum(c for c, _ in inside) / len(inside)
            total += abs(gap) * len(inside) / len(predictions)
    return 100 * total


@pytest.mark.parametrize("trainer", ["CTPT", "Zero", "MTA", "TDA"])
def test_each_method_reports_ece_and_writes_predictions_csv_and_record(trainer, pets_root, tiny64, tmp_path, capsys):
    out = tmp_path / trainer
    extra = ["TRAINER.CTPT.SELECTION_P", "0.25"] if trainer == "CTPT" else []
    result = main(run_args(trainer, pets_root, out, tiny64, *extra))
    printed = capsys.readouterr().out
    metrics = result.test_results
    assert 0.0 <= metrics["ece"] <= 100.0 and metrics["images"] == 20
    assert f"* ece: {metrics['ece']:.2f}%" in printed and "* accuracy:" in printed
    views = {"CTPT": "crop + flip + AugMix", "Zero": "crop + flip", "MTA": "crop + flip", "TDA": "the original only"}
    assert f"views: {views[trainer]})" in printed

    header, rows = log_rows(out)
    rows.sort(key=lambda r: r["i"])  # TDA logs in its stream's order
    assert header["method"] == CONFIGS[trainer] and len(rows) == 20 and all(0 < r["p"] <= 1 for r in rows)
    with open(out / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 20 and table[0]["dataset"] == "OxfordPets" and table[0]["image"].startswith("oxford_pets/")
    assert [int(r["prediction"]) for r in table] == [r["top5"][0] for r in rows]
    assert sum(int(r["correct"]) for r in table) / 20 * 100 == pytest.approx(metrics["accuracy"])
    assert table[0]["label_name"] and float(table[0]["confidence"]) == pytest.approx(rows[0]["p"])
    assert metrics["ece"] == pytest.approx(ece_by_hand([(float(r["confidence"]), r["correct"] == "1") for r in table]))

    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "tpt" and record["trainer"] == trainer
    assert record["tpt"]["method"] == CONFIGS[trainer] and record["metrics"]["ece"] == pytest.approx(metrics["ece"])
    assert record["tpt"]["seconds_per_image"]["OxfordPets"] > 0


def test_ctpt_without_its_dispersion_term_is_tpt(pets_root, tiny64, tmp_path):
    common = ("SELECTION_P", "0.25"), ("AUG", "augmix")
    tpt = main(run_args("TPT", pets_root, tmp_path / "tpt", tiny64, *[f"TRAINER.TPT.{k}" if i == 0 else v
                                                                    for k, v in common for i in (0, 1)]))
    ctpt = main(run_args("CTPT", pets_root, tmp_path / "ctpt", tiny64, "TRAINER.CTPT.LAMBDA", "0.0",
                         *[f"TRAINER.CTPT.{k}" if i == 0 else v for k, v in common for i in (0, 1)]))
    assert [r["top5"] for r in log_rows(tmp_path / "ctpt")[1]] == [r["top5"] for r in log_rows(tmp_path / "tpt")[1]]
    assert ctpt.test_results["accuracy"] == tpt.test_results["accuracy"]
    # With the term (C-TPT's 50), the prompts spread and the predictions' confidences change.
    main(run_args("CTPT", pets_root, tmp_path / "lambda50", tiny64,
                  *[f"TRAINER.CTPT.{k}" if i == 0 else v for k, v in common for i in (0, 1)]))
    assert [r["p"] for r in log_rows(tmp_path / "lambda50")[1]] != [r["p"] for r in log_rows(tmp_path / "ctpt")[1]]


def test_zero_temperature_vote_confidence_is_the_vote_share(pets_root, tiny64, tmp_path):
    main(run_args("Zero", pets_root, tmp_path, tiny64, "TRAINER.ZERO.PREC", "fp32"))
    _, rows = log_rows(tmp_path)
    # int(8 * 0.3) = 2 views vote: 2 of 2, or a 1-1 tie that the tie-break makes 2 of 3.
    assert {round(r["p"], 6) for r in rows} <= {1.0, round(2 / 3, 6)}


def test_tda_killed_run_resumes_with_its_caches(pets_root, tiny64, tmp_path, monkeypatch, capsys):
    args = run_args("TDA", pets_root, tmp_path / "straight", tiny64)
    main(args)
    header, expected = log_rows(tmp_path / "straight")
    order = header["stream"]["permutation"]
    assert sorted(order) == list(range(20)) and order != list(range(20))  # a recorded, shuffled stream
    assert [r["i"] for r in expected] == order  # logged in stream order

    calls = []
    step = TDACaches.step

    def dies_at_image_8(self, item):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt("simulated kill")
        return step(self, item)

    monkeypatch.setattr(TDACaches, "step", dies_at_image_8)
    killed = run_args("TDA", pets_root, tmp_path / "killed", tiny64)
    with pytest.raises(KeyboardInterrupt):
        main(killed)
    monkeypatch.setattr(TDACaches, "step", step)
    _, partial = log_rows(tmp_path / "killed")
    assert [r["i"] for r in partial] == order[:7]  # logged in stream order
    capsys.readouterr()
    main(killed)
    assert "Resuming: 7 of 20 images already done" in capsys.readouterr().out
    assert predictions(log_rows(tmp_path / "killed")[1]) == predictions(expected)
    # The cost covers the images timed (the killed part stopped before it could record its time), and a
    # run with nothing left to do still reports it.
    timing = json.loads((tmp_path / "killed" / "tpt_predictions" / "OxfordPets.timing.json").read_text())
    assert timing["images"] == 13
    main(killed)
    record = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert record["tpt"]["seconds_per_image"]["OxfordPets"] == pytest.approx(timing["seconds"] / 13)


def test_tda_shards_merge_into_one_stream(pets_root, tiny64, tmp_path, monkeypatch, capsys):
    main(run_args("TDA", pets_root, tmp_path / "all", tiny64, "TRAINER.TDA.AUG", "augmix"))  # the multi-view path
    _, whole = log_rows(tmp_path / "all")
    main(run_args("TDA", pets_root, tmp_path / "parts" / "a", tiny64, "TRAINER.TDA.AUG", "augmix",
                  "TRAINER.TDA.SHARD", "0/2"))
    monkeypatch.setenv(SHARD_ENV, "1/2")
    main(run_args("TDA", pets_root, tmp_path / "parts" / "b", tiny64, "TRAINER.TDA.AUG", "augmix"))
    monkeypatch.delenv(SHARD_ENV)
    shard_rows = log_rows(tmp_path / "parts" / "a", shard=".shard0of2")[1] + log_rows(tmp_path / "parts" / "b",
                                                                                     shard=".shard1of2")[1]
    assert predictions(sorted(shard_rows, key=lambda r: r["i"])) != predictions(whole)  # each shard: its own caches
    capsys.readouterr()
    merged = tta_merge.main([str(tmp_path / "parts"), "--output-dir", str(tmp_path / "merged")])
    assert predictions(log_rows(tmp_path / "merged")[1]) == predictions(whole)
    assert merged["OxfordPets"]["ece"] == pytest.approx(json.loads((tmp_path / "all" / "run.json").read_text())
                                                        ["metrics"]["ece"])
    with open(tmp_path / "merged" / "predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 20


def test_zero_shards_merge_into_the_unsharded_result(pets_root, tiny64, tmp_path, capsys):
    main(run_args("Zero", pets_root, tmp_path / "all", tiny64))
    for i in range(2):
        main(run_args("Zero", pets_root, tmp_path / "parts" / str(i), tiny64, "TRAINER.ZERO.SHARD", f"{i}/2"))
    tta_merge.main([str(tmp_path / "parts"), "--output-dir", str(tmp_path / "merged")])
    assert predictions(log_rows(tmp_path / "merged")[1]) == predictions(log_rows(tmp_path / "all")[1])


def test_bad_method_keys_are_one_clear_error(pets_root, tiny64, tmp_path):
    with pytest.raises(UserError, match='TRAINER.ZERO: TEMPLATES is "tip8".*GAMMA is 0'):
        main(run_args("Zero", pets_root, tmp_path, tiny64, "TRAINER.ZERO.TEMPLATES", "tip8", "TRAINER.ZERO.GAMMA",
                      "0.0"))
    with pytest.raises(UserError, match="NEG_ENTROPY is \\[0.5, 0.2\\]"):
        main(run_args("TDA", pets_root, tmp_path, tiny64, "TRAINER.TDA.NEG_ENTROPY", "(0.5, 0.2)"))
    with pytest.raises(UserError, match="ECE_BINS is 0"):
        main(run_args("MTA", pets_root, tmp_path, tiny64, "TRAINER.MTA.ECE_BINS", "0"))
