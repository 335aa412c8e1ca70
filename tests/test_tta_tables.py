"""The test-time methods' table: TPT's layout with top-1, ECE and seconds per image per method, from run
records, in Markdown, CSV and LaTeX."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vlprompt.results import collect_runs, tta_tables
from vlprompt.results.cli import main as tables_main

SHIFTS = ("I", "A", "V", "R", "K")
FINE = ("Flower102", "DTD", "Pets")


def method_run(root: Path, trainer: str, sets: tuple[str, ...], seed: int, base: float, config: dict | None = None,
               init: str = "words") -> None:
    """A run.json as the harness writes it: per-dataset metrics with ECE, seconds per image in ``tpt``."""
    per = {s: {"accuracy": base + k, "top5_accuracy": 90.0, "ece": 10.0 - k - seed, "images": 100}
           for k, s in enumerate(sets)}
    folder = root / trainer / "_".join(sets) / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({
        "trainer": trainer, "dataset": "ImageNet", "protocol": "tpt", "seed": seed, "shots": -1,
        "subsample": "all", "finished": "2024-01-01T00:00:00+00:00",
        "metrics": {"accuracy": float(np.mean([m["accuracy"] for m in per.values()]))},
        "metrics_per_dataset": per,
        **({"config": config} if config else {}),
        "tpt": {"method": trainer.upper(), "init": init, "shard": "",
                "seconds_per_image": {s: 0.5 * (k + 1) for k, s in enumerate(sets)}},
    }))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for trainer, base in (("TPT", 60.0), ("CTPT", 59.0), ("Zero", 61.0), ("MTA", 60.5), ("TDA", 62.0)):
        for seed in (1, 2):
            method_run(tmp_path, trainer, SHIFTS, seed, base + seed)
        method_run(tmp_path, trainer, FINE, 1, base - 10)
    return tmp_path


def test_methods_by_dataset_with_top1_ece_and_cost(tree):
    shifts, fine = tta_tables(collect_runs(tree).runs)
    assert shifts.columns == ["ImageNet", "ImageNet-A", "ImageNet-V2", "ImageNet-R", "ImageNet-Sketch", "Average",
                              "OOD Average"]
    assert [keys for keys, _ in shifts.rows[:3]] == [["TPT", "Top-1"], ["TPT", "ECE"], ["TPT", "s/image"]]
    assert [keys[0] for keys, _ in shifts.rows[::3]] == ["TPT", "CTPT", "Zero", "MTA", "TDA"]
    top1 = shifts.cell("TDA", "Top-1", column="ImageNet-A")
    assert (top1.mean, top1.std, top1.n) == (pytest.approx(64.5), pytest.approx(0.5), 2)
    ece = shifts.cell("TDA", "ECE", column="ImageNet")
    assert (ece.mean, ece.n) == (pytest.approx(8.5), 2)  # seeds 1 and 2: 9 and 8
    assert shifts.cell("Zero", "ECE", column="OOD Average").mean == pytest.approx(np.mean([7.5, 6.5, 5.5, 4.5]))
    assert shifts.cell("MTA", "s/image", column="ImageNet-Sketch").mean == pytest.approx(2.5)
    assert fine.columns == ["Flowers102", "DTD", "OxfordPets", "Average"]
    assert fine.cell("TPT", "Top-1", column="Average").mean == pytest.approx(np.mean([50.0, 51.0, 52.0]))
    assert any("ECE" in note and "15 by default" in note for note in shifts.notes)


def test_tables_command_writes_the_method_table_in_every_format(tree, tmp_path, capsys):
    assert tables_main([str(tree), "--protocol", "tta"]) == 0
    out = capsys.readouterr().out
    assert "### Test-time methods: ImageNet and its distribution shifts" in out
    assert "| TDA | Top-1 | 63.50 ± 0.50 (2) |" in out and "|  | ECE | 8.50 ± 0.50 (2) |" in out
    assert tables_main([str(tree), "--protocol", "test-time", "--format", "csv"]) == 0
    block = capsys.readouterr().out.split("\n# ")[0].split("\n", 1)[1]
    rows = list(csv.reader(io.StringIO(block)))
    assert rows[0][:5] == ["Method", "Metric", "ImageNet", "ImageNet std", "ImageNet n"]
    assert ["TDA", "s/image", "0.5000", "0.0000", "2"] == rows[[r[:2] for r in rows].index(["TDA", "s/image"])][:5]
    assert tables_main([str(tree), "--protocol", "tta", "--format", "latex", "--output-dir", str(tmp_path / "t")]) == 0
    written = sorted(p.name for p in (tmp_path / "t").iterdir())
    assert written == ["tta.tex", "tta_2.tex"]
    assert r"TDA & Top-1 & 63.50 $\pm$ 0.50 (2)" in (tmp_path / "t" / "tta.tex").read_text()


def test_one_row_per_method_across_its_runs_over_different_test_sets(tmp_path):
    """TEST_SETS (what the columns stand for) and LOAD's path are no setting; other keys split rows."""
    def config(sets: str, weight: float) -> dict:
        return {"SEED": 1, "TRAINER": {"NAME": "CTPT", "CTPT": {"TEST_SETS": sets, "LAMBDA": weight, "LOAD": ""}}}

    method_run(tmp_path, "CTPT", SHIFTS, 1, 60.0, config("/".join(SHIFTS), 50.0))
    method_run(tmp_path, "CTPT", FINE, 1, 50.0, config("/".join(FINE), 50.0))
    shifts, fine = tta_tables(collect_runs(tmp_path).runs)
    assert {keys[0] for keys, _ in shifts.rows + fine.rows} == {"CTPT"}
    method_run(tmp_path / "other", "CTPT", FINE, 1, 40.0, config("/".join(FINE), 0.0))
    _, fine = tta_tables(collect_runs(tmp_path).runs)
    assert {keys[0] for keys, _ in fine.rows} == {"CTPT (TRAINER.CTPT.LAMBDA=0.0)", "CTPT (TRAINER.CTPT.LAMBDA=50.0)"}
