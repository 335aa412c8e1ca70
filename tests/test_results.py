"""Results: parse_test_res on logs, run collection, every paper table from known numbers, the plot, and
the few-shot table and figure from real (tiny) runs of the trainers."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, train_args
from yacs.config import CfgNode

from vlprompt.results import (
    NA,
    Cell,
    base2new_table,
    collect_runs,
    cross_dataset_table,
    dg_table,
    few_shot_results,
    few_shot_table,
    harmonic_mean,
    tpt_tables,
)
from vlprompt.results.cli import main as tables_main
from vlprompt.results.parse import main as parse_main
from vlprompt.results.render import to_csv, to_latex, to_markdown
from vlprompt.run_record import infer_protocol

FAST = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20"]


def seed_cell(values) -> Cell:
    return Cell(float(np.mean(values)), float(np.std(values)), len(values))


def assert_cell(cell, values):
    """``cell`` is the seed mean, population std and seed count of ``values``."""
    assert isinstance(cell, Cell), f"expected numbers for {values}, got {cell!r}"
    expected = seed_cell(values)
    assert cell.mean == pytest.approx(expected.mean, abs=1e-9)
    assert cell.std == pytest.approx(expected.std, abs=1e-9)
    assert cell.n == expected.n


# --------------------------------------------------------------------------------------- log writing
def train_log(acc: float, wording: str = "Finish training", decimals: int = 1, val_accs=(), error=None) -> str:
    """A Dassl training log: per-epoch validation blocks before the end of training, the test after it."""
    lines = ["Setting fixed seed: 1", "Loading trainer: CoOp", "No checkpoint found, train from scratch"]
    for val in val_accs:
        lines += ["Evaluate on the *val* set", "=> result", "* total: 10", f"* accuracy: {val:.1f}%"]
    error = 100 - acc if error is None else error
    lines += [wording, "Deploy the last-epoch model", "Evaluate on the *test* set", "=> result", "* total: 1,881",
              "* correct: 1,795", f"* accuracy: {acc:.{decimals}f}%", f"* error: {error:.{decimals}f}%",
              "* macro_f1: 50.0%", "Elapsed: 0:00:03"]
    return "\n".join(lines) + "\n"


def eval_log(acc: float) -> str:
    return "\n".join(["Loading trainer: CoOp", "Evaluate on the *test* set", "=> result", "* total: 20",
                      f"* accuracy: {acc:.1f}%", f"* error: {100 - acc:.1f}%", "* macro_f1: 1.0%"]) + "\n"


def crashed_log() -> str:
    return "Loading trainer: CoOp\nepoch [1/50] batch [1/5] loss 2.3 (2.3)\nTraceback (most recent call last):\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------- parse_test_res
def test_parse_test_res_reads_both_wordings_and_prints_the_reference_output(tmp_path, capsys):
    exp = tmp_path / "exp"
    write(exp / "seed1" / "log.txt", train_log(91.8, val_accs=(40.0, 55.0)))  # val results come before the end
    write(exp / "seed2" / "log.txt", train_log(90.25, wording="Finished training", decimals=2))  # Dassl < 0.6.1
    write(exp / "seed3" / "log.txt", train_log(92.4))
    assert parse_main([str(exp)]) == 0
    values = [91.8, 90.25, 92.4]
    out = capsys.readouterr().out
    assert out == (
        f"Parsing files in {exp}\n"
        f"file: {exp / 'seed1' / 'log.txt'}. accuracy: 91.80%. \n"
        f"file: {exp / 'seed2' / 'log.txt'}. accuracy: 90.25%. \n"
        f"file: {exp / 'seed3' / 'log.txt'}. accuracy: 92.40%. \n"
        "===\n"
        f"Summary of directory: {exp}\n"
        "* accuracy: 91.48% +- 0.91%\n"
        "===\n"
    )
    assert f"{np.mean(values):.2f}" == "91.48" and f"{np.std(values):.2f}" == "0.91"

    assert parse_main([str(exp), "--ci95"]) == 0
    ci95 = 1.96 * np.std(values) / np.sqrt(3)
    assert f"* accuracy: 91.48% +- {ci95:.2f}%" in capsys.readouterr().out and f"{ci95:.2f}" == "1.03"

    assert parse_main([str(exp), "--keyword", "error"]) == 0
    assert "* error: 8.52% +- 0.91%" in capsys.readouterr().out  # errors 8.2, 9.75, 7.6


def test_parse_test_res_uses_the_newest_log_with_a_result(tmp_path, capsys):
    exp = tmp_path / "exp"
    write(exp / "seed1" / "log.txt", crashed_log())
    write(exp / "seed1" / "log.txt-2024-05-01-10-00-00", train_log(80.0))  # the re-run finished
    write(exp / "seed2" / "log.txt", train_log(70.0))
    write(exp / "seed2" / "log.txt-2024-05-02-10-00-00", crashed_log())  # a re-run that crashed
    write(exp / "seed3" / "log.txt", train_log(60.0))
    write(exp / "seed3" / "log.txt-2024-05-03-10-00-00", train_log(66.0))
    write(exp / "seed3" / "log.txt-2024-05-01-10-00-00", train_log(65.0))
    assert parse_main([str(exp)]) == 0
    captured = capsys.readouterr()
    assert f"file: {exp / 'seed1' / 'log.txt-2024-05-01-10-00-00'}. accuracy: 80.00%. " in captured.out
    assert f"file: {exp / 'seed2' / 'log.txt'}. accuracy: 70.00%. " in captured.out
    assert f"file: {exp / 'seed3' / 'log.txt-2024-05-03-10-00-00'}. accuracy: 66.00%. " in captured.out
    assert "* accuracy: 72.00% +- 5.89%" in captured.out  # mean and population std of 80, 70, 66
    assert f"{np.std([80.0, 70.0, 66.0]):.2f}" == "5.89"
    # The crashed newer run of seed2 is mentioned, not silently passed over.
    assert "seed2: log.txt-2024-05-02-10-00-00: no " in captured.err and "using log.txt" in captured.err


def test_parse_test_res_names_every_run_it_could_not_parse(tmp_path, capsys):
    exp = tmp_path / "exp"
    write(exp / "seed1" / "log.txt", train_log(75.0))
    write(exp / "seed2" / "log.txt", crashed_log())
    (exp / "seed3").mkdir()
    write(exp / "seed4" / "log.txt", eval_log(50.0))  # an evaluation log read as a training log
    write(exp / "seed5" / "log.txt", train_log(75.0).replace("* accuracy: 75.0%", "* accuracy: 7.5.0%"))
    write(exp / "notes.txt", "a stray file does not abort the parse")
    assert parse_main([str(exp)]) == 0
    captured = capsys.readouterr()
    assert "* accuracy: 75.00% +- 0.00%" in captured.out
    assert f'Could not parse {exp / "seed2"}: log.txt: no "Finish training" or "Finished training" line' in captured.err
    assert f"Could not parse {exp / 'seed3'}: no log.txt" in captured.err
    assert f"Could not parse {exp / 'seed4'}:" in captured.err and "(use --test-log)" in captured.err
    assert f"Could not parse {exp / 'seed5'}: log.txt: unreadable number in '* accuracy: 7.5.0%'" in captured.err
    assert f"Skipped {exp / 'notes.txt'}: not a run folder" in captured.err
    assert parse_main([str(exp), "--strict"]) == 1


def test_parse_test_res_test_logs_and_nothing_found(tmp_path, capsys):
    exp = tmp_path / "exp"
    write(exp / "seed1" / "log.txt", eval_log(61.0))
    write(exp / "seed2" / "log.txt", eval_log(63.0))
    assert parse_main([str(exp), "--test-log"]) == 0
    assert "* accuracy: 62.00% +- 1.00%" in capsys.readouterr().out
    assert parse_main([str(exp)]) == 1
    assert f"Nothing found in {exp}" in capsys.readouterr().err


def test_parse_test_res_multi_exp_averages_the_experiments(tmp_path, capsys):
    root = tmp_path / "exps"
    write(root / "exp-1" / "seed1" / "log.txt", train_log(80.0))
    write(root / "exp-1" / "seed2" / "log.txt", train_log(82.0))
    write(root / "exp-2" / "seed1" / "log.txt", train_log(70.0))
    write(root / "exp-3" / "seed1" / "log.txt", crashed_log())
    assert parse_main([str(root), "--multi-exp"]) == 0
    captured = capsys.readouterr()
    assert f"Summary of directory: {root / 'exp-1'}\n* accuracy: 81.00% +- 1.00%" in captured.out
    assert f"Summary of directory: {root / 'exp-2'}\n* accuracy: 70.00% +- 0.00%" in captured.out
    assert captured.out.endswith("Average performance\n* accuracy: 75.50%\n")
    assert f"Not in the average (nothing found): {root / 'exp-3'}" in captured.err


def test_parse_test_res_script_at_the_repository_root(tmp_path):
    write(tmp_path / "exp" / "seed1" / "log.txt", train_log(55.5, wording="Finished training"))
    done = subprocess.run([sys.executable, str(REPO_ROOT / "parse_test_res.py"), str(tmp_path / "exp")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-2:] == ["* accuracy: 55.50% +- 0.00%", "==="]


# --------------------------------------------------------------------------------------- run records
@pytest.mark.parametrize("trainer,subsample,shots,eval_only,source,expected", [
    ("CoOp", "all", 16, False, None, "few_shot"),
    ("CoOp", "all", -1, False, None, "full"),
    ("CoCoOp", "base", 16, False, None, "base2new_train"),
    ("CoCoOp", "base", 16, True, "ImageNet", "base2new_test_base"),
    ("CoCoOp", "new", 16, True, "ImageNet", "base2new_test_new"),
    ("ZeroshotCLIP", "all", -1, True, None, "zeroshot"),
    ("ZeroshotCLIP", "new", -1, True, None, "base2new_test_new"),
    ("ZeroshotCLIP", "base", -1, False, None, "base2new_test_base"),
    ("CoOp", "all", -1, True, "ImageNet", "domain_generalization"),
    ("CoOp", "all", -1, True, "Caltech101", "cross_dataset"),
    ("CoOp", "all", -1, True, None, "eval"),
    ("TPT", "all", -1, True, None, "tpt"),
])
def test_protocol_of_a_run(trainer, subsample, shots, eval_only, source, expected):
    dataset = "ImageNetA" if expected == "domain_generalization" else "OxfordPets"
    cfg = CfgNode({"TRAINER": {"NAME": trainer},
                   "DATASET": {"NAME": dataset, "SUBSAMPLE_CLASSES": subsample, "NUM_SHOTS": shots}})
    assert infer_protocol(cfg, eval_only, {"dataset": source} if source else None) == expected


FINISHED = "2024-01-01T00:00:00+00:00"


def record(root: Path, rel: str, trainer: str, dataset: str, protocol: str, seed: int, acc: float, shots: int = -1,
           subsample: str = "all", **extra) -> Path:
    """A run.json as train.py writes it (the fields tables read)."""
    folder = root / rel
    data = {"schema": 2, "status": "complete", "trainer": trainer, "dataset": dataset, "protocol": protocol,
            "shots": shots, "seed": seed, "subsample": subsample, "backbone": "ViT-B/16", "eval_only": False,
            "finished": FINISHED, "metrics": {"accuracy": acc, "error_rate": 100 - acc}, **extra}
    write(folder / "run.json", json.dumps(data))
    return folder


def few_shot_tree(root: Path) -> Path:
    record(root, "zs/pets", "ZeroshotCLIP", "OxfordPets", "zeroshot", -1, 85.0)
    record(root, "zs/caltech", "ZeroshotCLIP", "Caltech101", "zeroshot", -1, 90.0)
    for seed, (a1, a2, l1, l2) in enumerate([(80, 85, 70, 75), (82, 86, 71, 75), (84, None, 72, 75)], start=1):
        record(root, f"pets/CoOp/1shots/seed{seed}", "CoOp", "OxfordPets", "few_shot", seed, a1, shots=1)
        if a2 is not None:  # only two seeds of 2-shot CoOp on Pets
            record(root, f"pets/CoOp/2shots/seed{seed}", "CoOp", "OxfordPets", "few_shot", seed, a2, shots=2)
        record(root, f"pets/LP/1shots/seed{seed}", "LinearProbeCLIP", "OxfordPets", "few_shot", seed, l1, shots=1)
        record(root, f"pets/LP/2shots/seed{seed}", "LinearProbeCLIP", "OxfordPets", "few_shot", seed, l2, shots=2)
        record(root, f"caltech/CoOp/1shots/seed{seed}", "CoOp", "Caltech101", "few_shot", seed, 90 + seed, shots=1)
        # no 2-shot CoOp on Caltech101 at all: a missing run
        record(root, f"caltech/LP/1shots/seed{seed}", "LinearProbeCLIP", "Caltech101", "few_shot", seed, 88, shots=1)
        record(root, f"caltech/LP/2shots/seed{seed}", "LinearProbeCLIP", "Caltech101", "few_shot", seed, 88 + seed,
               shots=2)
    # Runs of other protocols stay out of the few-shot table.
    record(root, "b2n/pets", "CoOp", "OxfordPets", "base2new_train", 1, 99.0, shots=1, subsample="base")
    record(root, "xd/pets", "CoOp", "OxfordPets", "cross_dataset", 1, 98.0, source_dataset="ImageNet")
    return root


def test_few_shot_table_from_records(tmp_path):
    runs = collect_runs(few_shot_tree(tmp_path)).runs
    results = few_shot_results(runs)
    assert results.datasets == ["Caltech101", "OxfordPets"]  # CoOp's order
    assert results.methods == ["ZeroshotCLIP", "LinearProbeCLIP", "CoOp"]
    assert results.shots == [0, 1, 2]
    table = few_shot_table(results)
    assert table.columns == ["0", "1", "2"]
    assert_cell(table.cell("OxfordPets", "CoOp", column="1"), [80, 82, 84])
    assert_cell(table.cell("OxfordPets", "CoOp", column="2"), [85, 86])  # seeds counted: 2
    assert_cell(table.cell("OxfordPets", "LinearProbeCLIP", column="1"), [70, 71, 72])
    assert_cell(table.cell("OxfordPets", "LinearProbeCLIP", column="2"), [75, 75, 75])
    assert_cell(table.cell("OxfordPets", "ZeroshotCLIP", column="0"), [85.0])
    assert_cell(table.cell("Caltech101", "CoOp", column="1"), [91, 92, 93])
    assert table.cell("Caltech101", "CoOp", column="2") is None  # missing, not zero
    assert_cell(table.cell("Caltech101", "LinearProbeCLIP", column="2"), [89, 90, 91])
    assert table.cell("OxfordPets", "CoOp", column="0") == NA and table.cell("OxfordPets", "ZeroshotCLIP", column="1") == NA
    # Averages over the two datasets: means of the seed means; missing when a dataset is missing.
    assert table.cell("Average", "CoOp", column="1") == Cell((82 + 92) / 2)
    assert table.cell("Average", "CoOp", column="2") is None
    assert table.cell("Average", "LinearProbeCLIP", column="1") == Cell((71 + 88) / 2)
    assert table.cell("Average", "LinearProbeCLIP", column="2") == Cell((75 + 90) / 2)
    assert table.cell("Average", "ZeroshotCLIP", column="0") == Cell(87.5)

    md = to_markdown(table)
    assert "| Caltech101 | ZeroshotCLIP | 90.00 (1) |  |  |" in md
    assert "|  | CoOp |  | 92.00 ± 0.82 (3) | – |" in md
    assert "| OxfordPets | ZeroshotCLIP | 85.00 (1) |  |  |" in md
    assert "|  | CoOp |  | 82.00 ± 1.63 (3) | 85.50 ± 0.50 (2) |" in md
    assert "| Average | ZeroshotCLIP | 87.50 |  |  |" in md
    assert "|  | CoOp |  | 87.00 | – |" in md
    assert "|  | LinearProbeCLIP |  | 79.50 | 82.50 |" in md
    rows = list(csv.reader(io.StringIO(to_csv(table))))
    assert rows[0] == ["Dataset", "Method", "0", "0 std", "0 n", "1", "1 std", "1 n", "2", "2 std", "2 n"]
    assert ["Caltech101", "CoOp", "", "", "", "92.0000", "0.8165", "3", "", "", ""] in rows
    assert ["Average", "CoOp", "", "", "", "87.0000", "", "", "", "", ""] in rows
    latex = to_latex(table)
    assert r"OxfordPets & ZeroshotCLIP & 85.00 (1) &  &  \\" in latex
    assert r" & CoOp &  & 82.00 $\pm$ 1.63 (3) & 85.50 $\pm$ 0.50 (2) \\" in latex
    assert r" & CoOp &  & 87.00 & -- \\" in latex


def test_restricting_datasets_shows_a_dataset_without_runs_as_missing(tmp_path):
    runs = collect_runs(few_shot_tree(tmp_path)).runs
    table = few_shot_table(few_shot_results(runs, datasets=["oxford_pets", "EuroSAT"]))
    assert [keys for keys, _ in table.rows][:4] == [["OxfordPets", "ZeroshotCLIP"], ["OxfordPets", "LinearProbeCLIP"],
                                                    ["OxfordPets", "CoOp"], ["EuroSAT", "ZeroshotCLIP"]]
    assert table.cell("EuroSAT", "CoOp", column="1") is None
    assert table.cell("EuroSAT", "ZeroshotCLIP", column="0") is None
    assert table.cell("Average", "CoOp", column="1") is None


# CoCoOp, Table 1 (base-to-new, ViT-B/16, 16 shots): per-dataset Base and New accuracy.
COCOOP_BASE_NEW = {
    "ImageNet": (75.98, 70.43), "Caltech101": (97.96, 93.81), "OxfordPets": (95.20, 97.69),
    "StanfordCars": (70.49, 73.59), "OxfordFlowers": (94.87, 71.75), "Food101": (90.70, 91.29),
    "FGVCAircraft": (33.41, 23.71), "SUN397": (79.74, 76.86), "DescribableTextures": (77.01, 56.00),
    "EuroSAT": (87.49, 60.04), "UCF101": (82.33, 73.45),
}
COCOOP_H = {"ImageNet": 73.10, "Caltech101": 95.84, "OxfordPets": 96.43, "StanfordCars": 72.01,
            "OxfordFlowers": 81.71, "Food101": 90.99, "FGVCAircraft": 27.74, "SUN397": 78.27,
            "DescribableTextures": 64.85, "EuroSAT": 71.21, "UCF101": 77.64}


def base2new_tree(root: Path) -> Path:
    for dataset, (base, new) in COCOOP_BASE_NEW.items():
        for seed, offset in zip((1, 2, 3), (-0.3, 0.0, 0.3)):
            tail = f"{dataset}/shots_16/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1/seed{seed}"
            train = record(root, f"train_base/{tail}", "CoCoOp", dataset, "base2new_train", seed, base + offset,
                           shots=16, subsample="base")
            record(root, f"test_new/{tail}", "CoCoOp", dataset, "base2new_test_new", seed, new - offset, shots=16,
                   subsample="new", eval_only=True, model_dir=str(train))
    # Zero-shot CLIP on two datasets only: its 11-dataset average cannot be given.
    record(root, "zs/pets/base", "ZeroshotCLIP", "OxfordPets", "base2new_test_base", -1, 91.17, subsample="base")
    record(root, "zs/pets/new", "ZeroshotCLIP", "OxfordPets", "base2new_test_new", -1, 97.26, subsample="new")
    record(root, "zs/eurosat/base", "ZeroshotCLIP", "EuroSAT", "base2new_test_base", -1, 56.48, subsample="base")
    return root


def test_base2new_table_takes_h_of_the_averaged_base_and_new_as_cocoop(tmp_path):
    table = base2new_table(collect_runs(base2new_tree(tmp_path)).runs)
    assert table.columns == ["Base", "New", "H"]
    for dataset, (base, new) in COCOOP_BASE_NEW.items():
        shown = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD"}.get(dataset, dataset)
        assert_cell(table.cell(shown, "CoCoOp", column="Base"), [base - 0.3, base, base + 0.3])
        assert_cell(table.cell(shown, "CoCoOp", column="New"), [new + 0.3, new, new - 0.3])
        h = table.cell(shown, "CoCoOp", column="H")
        assert h.mean == pytest.approx(harmonic_mean(base, new)) and round(h.mean, 2) == COCOOP_H[dataset]
    average = [table.cell("Average", "CoCoOp", column=c) for c in ("Base", "New", "H")]
    assert [round(c.mean, 2) for c in average] == [80.47, 71.69, 75.83]
    assert average[2].mean == pytest.approx(harmonic_mean(average[0].mean, average[1].mean))
    # Not the mean of the per-dataset H (which is what a hand computation often gives).
    assert round(float(np.mean(list(COCOOP_H.values()))), 2) != 75.83
    assert "| Average | ZeroshotCLIP | – | – | – |\n|  | CoCoOp | 80.47 | 71.69 | 75.83 |" in to_markdown(table)
    # Zero-shot CLIP: Pets complete, EuroSAT's New missing (so no H), other datasets and the average missing.
    assert table.cell("OxfordPets", "ZeroshotCLIP", column="H").mean == pytest.approx(harmonic_mean(91.17, 97.26))
    assert_cell(table.cell("EuroSAT", "ZeroshotCLIP", column="Base"), [56.48])
    assert table.cell("EuroSAT", "ZeroshotCLIP", column="New") is None
    assert table.cell("EuroSAT", "ZeroshotCLIP", column="H") is None
    assert table.cell("ImageNet", "ZeroshotCLIP", column="Base") is None
    assert table.cell("Average", "ZeroshotCLIP", column="Base") is None
    assert table.cell("Average", "ZeroshotCLIP", column="H") is None


def test_base2new_prefers_an_explicit_base_evaluation_of_the_same_seed(tmp_path):
    record(tmp_path, "train/seed1", "CoCoOp", "EuroSAT", "base2new_train", 1, 80.0, subsample="base")
    record(tmp_path, "train/seed2", "CoCoOp", "EuroSAT", "base2new_train", 2, 82.0, subsample="base")
    record(tmp_path, "test_base/seed1", "CoCoOp", "EuroSAT", "base2new_test_base", 1, 81.0, subsample="base",
           finished="2023-01-01T00:00:00+00:00")
    table = base2new_table(collect_runs(tmp_path).runs)
    assert_cell(table.cell("EuroSAT", "CoCoOp", column="Base"), [81.0, 82.0])
    assert table.notes and not any("two runs" in note for note in table.notes)


def transfer_tree(root: Path, targets, values, protocol: str, moved: bool = False) -> Path:
    """CoOp trained on ImageNet (seeds 1-3) and evaluated on ``targets``; zero-shot CLIP everywhere but the
    last target. With ``moved``, model_dir names where the tree used to be."""
    for seed, source_acc in zip((1, 2, 3), (71.0, 71.5, 72.5)):
        trained = record(root, f"imagenet/CoOp/vit_b16_16shots/seed{seed}", "CoOp", "ImageNet", "few_shot", seed,
                         source_acc, shots=16)
        model_dir = f"/elsewhere/output/imagenet/CoOp/vit_b16_16shots/seed{seed}" if moved else str(trained)
        for target, base in zip(targets, values):
            record(root, f"evaluation/CoOp/{target}/seed{seed}", "CoOp", target, protocol, seed, base + seed,
                   eval_only=True, model_dir=model_dir, source_dataset="ImageNet")
    record(root, "zs/ImageNet", "ZeroshotCLIP", "ImageNet", "zeroshot", -1, 66.7)
    for target, base in list(zip(targets, values))[:-1]:
        record(root, f"zs/{target}", "ZeroshotCLIP", target, "zeroshot", -1, base - 5)
    return root


XD_VALUES = [93.0, 89.0, 64.0, 68.0, 85.0, 18.0, 64.0, 41.0, 46.0, 66.0]


@pytest.mark.parametrize("moved", [False, True])
def test_cross_dataset_table(tmp_path, moved):
    from vlprompt.results.runs import XD_TARGETS

    table = cross_dataset_table(collect_runs(transfer_tree(tmp_path, XD_TARGETS, XD_VALUES, "cross_dataset",
                                                           moved=moved)).runs)
    assert table.columns == ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101",
                             "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101", "Average"]
    assert [keys for keys, _ in table.rows] == [["ZeroshotCLIP"], ["CoOp"]]
    # Source accuracy: the final tests of the three models the evaluations loaded (found by model_dir).
    assert_cell(table.cell("CoOp", column="ImageNet"), [71.0, 71.5, 72.5])
    for target, base in zip(XD_TARGETS, XD_VALUES):
        assert_cell(table.cell("CoOp", column=table.columns[1 + XD_TARGETS.index(target)]),
                    [base + 1, base + 2, base + 3])
    assert table.cell("CoOp", column="Average") == Cell(pytest.approx(float(np.mean(XD_VALUES)) + 2))
    assert_cell(table.cell("ZeroshotCLIP", column="ImageNet"), [66.7])
    assert_cell(table.cell("ZeroshotCLIP", column="Caltech101"), [88.0])
    assert table.cell("ZeroshotCLIP", column="UCF101") is None
    assert table.cell("ZeroshotCLIP", column="Average") is None


def test_domain_generalisation_table(tmp_path):
    from vlprompt.results.runs import DG_TARGETS

    values = [64.0, 47.0, 49.0, 75.0]
    table = dg_table(collect_runs(transfer_tree(tmp_path, DG_TARGETS, values, "domain_generalization")).runs)
    assert table.columns == ["ImageNet", "ImageNet-V2", "ImageNet-Sketch", "ImageNet-A", "ImageNet-R", "OOD Average"]
    assert_cell(table.cell("CoOp", column="ImageNet"), [71.0, 71.5, 72.5])
    assert_cell(table.cell("CoOp", column="ImageNet-Sketch"), [48.0, 49.0, 50.0])
    assert table.cell("CoOp", column="OOD Average") == Cell(pytest.approx(float(np.mean(values)) + 2))
    assert_cell(table.cell("ZeroshotCLIP", column="ImageNet-A"), [44.0])
    assert table.cell("ZeroshotCLIP", column="ImageNet-R") is None
    assert table.cell("ZeroshotCLIP", column="OOD Average") is None


def test_tpt_tables_with_set_ids_and_per_dataset_metrics(tmp_path):
    shift = {"I": 68.98, "A": 54.77, "V": 63.45, "R": 77.06, "K": 47.94}
    write(tmp_path / "tpt/shifts/run.json", json.dumps({
        "trainer": "TPT", "dataset": "ImageNet", "protocol": "tpt", "seed": 0, "shots": -1, "subsample": "all",
        "finished": FINISHED, "metrics": {"accuracy": float(np.mean(list(shift.values())))},
        "metrics_per_dataset": {k: {"accuracy": v, "top5_accuracy": 90.0} for k, v in shift.items()},
    }))
    fine = {"Flower102": 68.98, "DTD": 47.75, "Pets": 87.79, "Cars": 66.87, "UCF101": 68.04, "Caltech101": 94.16,
            "Food101": 84.67, "SUN397": 65.50, "Aircraft": 24.78, "eurosat": 42.44}
    for set_id, value in fine.items():
        record(tmp_path, f"tpt/{set_id}", "TPT", set_id, "tpt", 0, value)
    record(tmp_path, "tpt/shard", "TPT", "ImageNetA", "tpt", 0, 10.0, tpt={"init": "words", "shard": "0/4"})
    record(tmp_path, "zs/imagenet", "ZeroshotCLIP", "ImageNet", "zeroshot", -1, 66.73)
    record(tmp_path, "zs/dtd", "ZeroshotCLIP", "DescribableTextures", "zeroshot", -1, 44.27)
    collection = collect_runs(tmp_path)
    assert any("shard 0/4 of a TPT run, left out" in note for note in collection.notes)
    shifts, fine_grained = tpt_tables(collection.runs)
    assert shifts.columns == ["ImageNet", "ImageNet-A", "ImageNet-V2", "ImageNet-R", "ImageNet-Sketch", "Average",
                              "OOD Average"]
    assert [cell.mean for cell in shifts.rows[1][1][:5]] == [68.98, 54.77, 63.45, 77.06, 47.94]
    assert shifts.cell("TPT", column="Average").mean == pytest.approx(np.mean(list(shift.values())))
    assert shifts.cell("TPT", column="OOD Average").mean == pytest.approx(np.mean([54.77, 63.45, 77.06, 47.94]))
    assert_cell(shifts.cell("ZeroshotCLIP", column="ImageNet"), [66.73])
    assert shifts.cell("ZeroshotCLIP", column="ImageNet-A") is None
    assert shifts.cell("ZeroshotCLIP", column="Average") is None
    assert fine_grained.columns == ["Flowers102", "DTD", "OxfordPets", "StanfordCars", "UCF101", "Caltech101",
                                    "Food101", "SUN397", "FGVCAircraft", "EuroSAT", "Average"]
    assert [c.mean for c in fine_grained.rows[1][1][:10]] == list(fine.values())
    assert fine_grained.cell("TPT", column="Average").mean == pytest.approx(np.mean(list(fine.values())))
    assert fine_grained.cell("ZeroshotCLIP", column="DTD").mean == 44.27
    assert fine_grained.cell("ZeroshotCLIP", column="Average") is None


def test_duplicate_runs_are_not_averaged_and_are_reported(tmp_path):
    record(tmp_path, "a/seed1", "CoOp", "EuroSAT", "few_shot", 1, 60.0, shots=4, finished="2024-01-01T00:00:00+00:00")
    record(tmp_path, "b/seed1", "CoOp", "EuroSAT", "few_shot", 1, 70.0, shots=4, finished="2024-02-01T00:00:00+00:00")
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert_cell(results.cell("EuroSAT", "CoOp", 4), [70.0])
    assert any(f"using {tmp_path / 'b' / 'seed1'}, not {tmp_path / 'a' / 'seed1'}" in n for n in results.notes)


def test_label_by_config_keys_separates_method_variants(tmp_path):
    for csc, acc in (("False", 60.0), ("True", 65.0)):
        record(tmp_path, f"csc{csc}/seed1", "CoOp", "EuroSAT", "few_shot", 1, acc, shots=4,
               config={"TRAINER": {"COOP": {"CSC": csc == "True"}}})
    results = few_shot_results(collect_runs(tmp_path).runs, label_by=["trainer", "TRAINER.COOP.CSC"])
    assert results.methods == ["CoOp (CSC=False)", "CoOp (CSC=True)"]
    assert_cell(results.cell("EuroSAT", "CoOp (CSC=True)", 4), [65.0])
    assert_cell(results.cell("EuroSAT", "CoOp (CSC=False)", 4), [60.0])
    # run.json paths work too (TPT's record names its initialisation under "tpt").
    record(tmp_path, "tpt", "TPT", "ImageNetA", "tpt", 0, 54.8, tpt={"init": "coop", "shard": ""})
    table = tpt_tables(collect_runs(tmp_path).runs, label_by=["trainer", "tpt.init"])[0]
    assert table.cell("TPT (init=coop)", column="ImageNet-A") == Cell(54.8, 0.0, 1)


def test_runs_without_a_record_come_from_their_log_and_broken_ones_are_listed(tmp_path):
    header = ["Setting fixed seed: 2", "***************", "** Arguments **", "***************", "eval_only: False",
              "model_dir: ", "seed: 2", "************", "** Config **", "************",
              "DATASET:", "  NAME: EuroSAT", "  NUM_SHOTS: 4", "  SUBSAMPLE_CLASSES: all", "MODEL:", "  BACKBONE:",
              "    NAME: RN50", "SEED: 2", "TRAINER:", "  NAME: CoOp", "Collecting env info ...", ""]
    log = "\n".join(header) + train_log(64.2)
    write(tmp_path / "from_log" / "log.txt", log)
    write(tmp_path / "bad_record" / "run.json", "{not json")
    write(tmp_path / "bad_record" / "log.txt", log.replace("64.2%", "66.0%"))
    write(tmp_path / "crashed" / "log.txt", crashed_log())
    write(tmp_path / "no_config" / "log.txt", train_log(50.0))
    collection = collect_runs(tmp_path)
    by_folder = {Path(run.directory).name: run for run in collection.runs}
    run = by_folder["from_log"]
    assert (run.trainer, run.dataset, run.protocol, run.shots, run.seed, run.backbone, run.origin) == \
           ("CoOp", "EuroSAT", "few_shot", 4, 2, "RN50", "log.txt")
    assert run.metrics == {"accuracy": 64.2, "error_rate": 35.8, "macro_f1": 50.0}
    assert by_folder["bad_record"].metrics["accuracy"] == 66.0
    assert any("unreadable run.json" in note for note in collection.notes)
    problems = {Path(p.directory).name: p.reason for p in collection.problems}
    assert set(problems) == {"crashed", "no_config"}
    assert "log.txt: no " in problems["crashed"] and "did not finish" in problems["crashed"]
    assert "no readable '** Config **' block" in problems["no_config"]


def test_tables_command_formats_files_and_strictness(tmp_path, capsys):
    root = few_shot_tree(tmp_path / "out")
    assert tables_main([str(root), "--protocol", "few-shot", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# Few-shot accuracy")
    rows = list(csv.reader(io.StringIO(captured.out.split("\n", 1)[1])))
    assert ["OxfordPets", "CoOp", "", "", "", "82.0000", "1.6330", "3", "85.5000", "0.5000", "2"] in rows
    assert tables_main([str(root), "--format", "latex", "--output-dir", str(tmp_path / "tables")]) == 0
    # The tree also holds one base-to-new and one cross-dataset run: every table with runs is written.
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["base2new.tex", "cross_dataset.tex",
                                                                     "few_shot.tex"]
    assert r"\begin{tabular}{llccc}" in (tmp_path / "tables" / "few_shot.tex").read_text()
    write(root / "broken" / "log.txt", crashed_log())
    assert tables_main([str(root), "--protocol", "few_shot"]) == 0
    assert f"Could not read {root / 'broken'}:" in capsys.readouterr().err
    assert tables_main([str(root), "--protocol", "few_shot", "--strict"]) == 1
    assert tables_main([str(root), "--protocol", "dg"]) == 1
    assert "No runs for a dg table" in capsys.readouterr().err


def test_few_shot_plot_is_written_with_the_table_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from vlprompt.results.plots import few_shot_series, plot_few_shot

    results = few_shot_results(collect_runs(few_shot_tree(tmp_path / "out")).runs)
    paths = plot_few_shot(results, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["Caltech101.png", "OxfordPets.png", "average.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(path).shape[0] > 100
    series = {s.method: s for s in few_shot_series(results, "Caltech101")}
    assert series["ZeroshotCLIP"].shots == [0] and series["ZeroshotCLIP"].zero_shot
    assert series["CoOp"].shots == [1] and series["CoOp"].means == [92.0]  # the missing 2-shot run is a gap
    assert series["LinearProbeCLIP"].linear_probe and series["LinearProbeCLIP"].means == [88.0, 90.0]
    assert series["LinearProbeCLIP"].stds == [pytest.approx(0.0), pytest.approx(np.std([89, 90, 91]))]
    average = {s.method: s for s in few_shot_series(results)}
    assert average["CoOp"].shots == [1] and average["CoOp"].means == [87.0]
    assert average["LinearProbeCLIP"].means == [79.5, 82.5]


# --------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def real_runs(pets_root, tiny_vit, tmp_path_factory):
    """ZeroshotCLIP, CoOp and LinearProbeCLIP (1 and 2 shots, seeds 1 and 2) run through train.py on the
    synthetic OxfordPets, into an output tree laid out as the scripts lay it out."""
    from vlprompt.cli import main

    root = tmp_path_factory.mktemp("output")
    accuracy: dict[tuple[str, int], list[float]] = {}
    model = ["MODEL.BACKBONE.NAME", tiny_vit, *FAST]
    zs = main(train_args(pets_root, root / "ZeroshotCLIP/vit_b16/oxford_pets", "ZeroshotCLIP",
                         "trainers/CoOp/vit_b16.yaml", "--eval-only", *model))
    accuracy[("ZeroshotCLIP", 0)] = [zs.test_results["accuracy"]]
    for shots in (1, 2):
        for seed in (1, 2):
            coop = main(train_args(
                pets_root, root / f"oxford_pets/CoOp/vit_b16_{shots}shots/nctx4_cscFalse_ctpend/seed{seed}", "CoOp",
                "trainers/CoOp/vit_b16.yaml", "--seed", str(seed), *model, "DATASET.NUM_SHOTS", str(shots),
                "OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4",
                "TRAINER.COOP.PREC", "fp32", "OPTIM.LR", "0.05",
            ))
            accuracy.setdefault(("CoOp", shots), []).append(coop.test_results["accuracy"])
            probe = main(train_args(
                pets_root, root / f"oxford_pets/LinearProbeCLIP/vit_b16_{shots}shots/seed{seed}", "LinearProbeCLIP",
                "trainers/LinearProbeCLIP/vit_b16.yaml", "--seed", str(seed), *model, "DATASET.NUM_SHOTS", str(shots),
                "TRAINER.LINEAR_PROBE.NUM_STEP", "2",
            ))
            accuracy.setdefault(("LinearProbeCLIP", shots), []).append(probe.test_results["accuracy"])
    # Base-to-new as scripts/cocoop/base2new_{train,test}.sh lay it out (CoOp trained on the base classes),
    # and zero-shot CLIP on both halves.
    coop_b2n = ["OPTIM.MAX_EPOCH", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TRAINER.COOP.N_CTX", "4",
                "TRAINER.COOP.PREC", "fp32", "OPTIM.LR", "0.05", "DATASET.NUM_SHOTS", "2"]
    tail = "oxford_pets/shots_2/CoOp/vit_b16/seed1"
    base = main(train_args(pets_root, root / f"base2new/train_base/{tail}", "CoOp", "trainers/CoOp/vit_b16.yaml",
                           "--seed", "1", *model, *coop_b2n, "DATASET.SUBSAMPLE_CLASSES", "base"))
    new = main(train_args(pets_root, root / f"base2new/test_new/{tail}", "CoOp", "trainers/CoOp/vit_b16.yaml",
                          "--seed", "1", "--eval-only", "--model-dir", str(root / f"base2new/train_base/{tail}"),
                          "--load-epoch", "1", *model, *coop_b2n, "DATASET.SUBSAMPLE_CLASSES", "new"))
    accuracy[("CoOp", "base")] = [base.test_results["accuracy"]]
    accuracy[("CoOp", "new")] = [new.test_results["accuracy"]]
    for part in ("base", "new"):
        zs_part = main(train_args(pets_root, root / f"base2new/ZeroshotCLIP/{part}/oxford_pets", "ZeroshotCLIP",
                                  "trainers/CoOp/vit_b16.yaml", "--eval-only", *model,
                                  "DATASET.SUBSAMPLE_CLASSES", part))
        accuracy[("ZeroshotCLIP", part)] = [zs_part.test_results["accuracy"]]
    return root, accuracy


def test_few_shot_table_and_plot_from_real_runs(real_runs, tmp_path, capsys):
    root, accuracy = real_runs
    plots = tmp_path / "plots"
    assert tables_main([str(root), "--protocol", "few_shot", "--format", "csv", "--plot", str(plots)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(io.StringIO(captured.out.split("\n", 1)[1])))
    assert rows[0] == ["Dataset", "Method", "0", "0 std", "0 n", "1", "1 std", "1 n", "2", "2 std", "2 n"]
    body = {tuple(row[:2]): row[2:] for row in rows[1:]}
    assert list(body) == [("OxfordPets", "ZeroshotCLIP"), ("OxfordPets", "LinearProbeCLIP"), ("OxfordPets", "CoOp")]
    for (method, shots), values in accuracy.items():
        if shots in ("base", "new"):
            continue
        column = {0: 0, 1: 3, 2: 6}[shots]
        cell = body[("OxfordPets", method)][column:column + 3]
        assert cell == [f"{np.mean(values):.4f}", f"{np.std(values):.4f}", str(len(values))], (method, shots)
    assert body[("OxfordPets", "ZeroshotCLIP")][3:] == [""] * 6  # not applicable: blank, not zero
    assert min(accuracy[("LinearProbeCLIP", 1)] + accuracy[("LinearProbeCLIP", 2)]) > 20.0  # above chance
    assert (plots / "OxfordPets.png").read_bytes()[:4] == b"\x89PNG"
    assert "Could not read" not in captured.err
    # Training made a tensorboard/ folder only if tensorboard is installed (never an empty one).
    import importlib.util

    assert bool(list(root.rglob("tensorboard"))) == (importlib.util.find_spec("tensorboard") is not None)


def test_logs_alone_give_the_same_real_table(real_runs, tmp_path):
    root, accuracy = real_runs
    copy = tmp_path / "logs_only"
    shutil.copytree(root, copy)
    for path in copy.rglob("run.json"):
        path.unlink()
    collection = collect_runs(copy)
    assert not collection.problems and {run.origin for run in collection.runs} == {"log.txt"}
    results = few_shot_results(collection.runs)
    for (method, shots), values in accuracy.items():
        if shots in ("base", "new"):
            continue
        cell = results.cell("OxfordPets", method, shots)
        # Logs print one decimal (Dassl's format), so means agree to the rounding.
        assert cell.mean == pytest.approx(np.mean(values), abs=0.05) and cell.n == len(values)


def test_base2new_table_from_real_runs(real_runs, capsys):
    root, accuracy = real_runs
    assert tables_main([str(root / "base2new"), "--protocol", "base2new", "--format", "md"]) == 0
    md = capsys.readouterr().out
    for method in ("ZeroshotCLIP", "CoOp"):
        base, new = accuracy[(method, "base")][0], accuracy[(method, "new")][0]
        h = harmonic_mean(base, new)
        assert f"| {method} | {base:.2f} (1) | {new:.2f} (1) | {h:.2f} |" in md
    records = [json.loads(p.read_text()) for p in sorted((root / "base2new").rglob("run.json"))]
    assert sorted(r["protocol"] for r in records) == ["base2new_test_base", "base2new_test_new", "base2new_test_new",
                                                      "base2new_train"]


def test_parse_test_res_on_real_runs(real_runs, capsys):
    root, accuracy = real_runs
    folder = root / "oxford_pets/CoOp/vit_b16_2shots/nctx4_cscFalse_ctpend"
    assert parse_main([str(folder)]) == 0
    out = capsys.readouterr().out
    values = [round(v, 1) for v in accuracy[("CoOp", 2)]]
    assert f"* accuracy: {np.mean(values):.2f}% +- {np.std(values):.2f}%" in out


def test_missing_legend_only_when_a_cell_is_missing():
    from vlprompt.results import Cell, Table
    from vlprompt.results.render import to_markdown

    table = Table("tpt", "T", ["Method"], ["A", "B"], notes=["a note"])
    table.rows.append((["TPT"], [Cell(55.0), Cell(40.0)]))
    assert "missing (no run found)" not in to_markdown(table) and "- a note" in to_markdown(table)
    table.rows.append((["CoOp"], [Cell(50.0), None]))
    assert "- –: missing (no run found)." in to_markdown(table)
