"""Tables never average unlike runs: output folders of different settings given together, for every
protocol; and the few-shot figures (one style per method, the legend off the data, zero-shot apart)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_fingerprint import _cfg as config_with
from test_results import assert_cell, train_log, write

from vlprompt.results import (
    base2new_table,
    collect_runs,
    cross_dataset_table,
    dg_table,
    few_shot_results,
    few_shot_table,
    tpt_tables,
)
from vlprompt.results.cli import main as tables_main

FINISHED = "2024-01-01T00:00:00+00:00"


def full_config(trainer: str, dataset: str, seed: int, shots: int = -1, subsample: str = "all", **changes):
    """The full config of a run as run.json stores it (train.py's defaults for ``trainer``, then ``changes``
    given as KEY__SUBKEY=value)."""
    return config_with(**{"TRAINER__NAME": trainer, "DATASET__NAME": dataset, "SEED": seed,
                          "DATASET__NUM_SHOTS": shots, "DATASET__SUBSAMPLE_CLASSES": subsample,
                          "MODEL__BACKBONE__NAME": "RN50",
                          "OUTPUT_DIR": f"/somewhere/{trainer}/{dataset}/seed{seed}",  # never counts
                          **changes})


def run_json(root: Path, rel: str, cfg, protocol: str, acc: float, **extra) -> Path:
    """A schema-2 run.json for ``cfg`` (a full config) in ``root/rel``."""
    data = {"schema": 2, "status": "complete", "trainer": cfg.TRAINER.NAME, "dataset": cfg.DATASET.NAME,
            "protocol": protocol, "shots": cfg.DATASET.NUM_SHOTS, "seed": cfg.SEED,
            "subsample": cfg.DATASET.SUBSAMPLE_CLASSES, "backbone": cfg.MODEL.BACKBONE.NAME, "eval_only": False,
            "finished": FINISHED, "metrics": {"accuracy": acc}, **extra,
            "config": json.loads(json.dumps(cfg))}
    write(root / rel / "run.json", json.dumps(data))
    return root / rel


def coop(dataset: str, seed: int, shots: int, epochs: int, **changes):
    return full_config("CoOp", dataset, seed, shots, **{"OPTIM__MAX_EPOCH": epochs, "TRAINER__COOP__N_CTX": 16,
                                                         **changes})


# ------------------------------------------------------------------------------------------ few-shot
def test_few_shot_cells_never_mix_configurations(tmp_path):
    """The issue: rn50_ep50 (50 epochs, seeds 1-2) and rn50 run for 5 epochs (seed 3) given together."""
    for seed, acc in ((1, 11.9), (2, 12.1)):
        run_json(tmp_path, f"rn50_ep50/pets/CoOp/1shots/seed{seed}", coop("OxfordPets", seed, 1, 50), "few_shot", acc)
    run_json(tmp_path, "rn50/pets/CoOp/1shots/seed3", coop("OxfordPets", 3, 1, 5), "few_shot", 30.0)
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["CoOp (OPTIM.MAX_EPOCH=5)", "CoOp (OPTIM.MAX_EPOCH=50)"]
    assert_cell(results.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=50)", 1), [11.9, 12.1])
    assert_cell(results.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=5)", 1), [30.0])
    note = next(n for n in results.notes if n.startswith("CoOp: runs whose settings differ"))
    assert "CoOp (OPTIM.MAX_EPOCH=5) / CoOp (OPTIM.MAX_EPOCH=50)" in note and "OPTIM.MAX_EPOCH" in note
    md = few_shot_table(results)
    assert md.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=50)", column="1").n == 2


def test_one_configuration_over_shots_and_datasets_is_one_row(tmp_path):
    for dataset in ("OxfordPets", "Caltech101"):
        for shots in (1, 2):
            for seed in (1, 2):
                run_json(tmp_path, f"{dataset}/{shots}/seed{seed}", coop(dataset, seed, shots, 50), "few_shot",
                         50.0 + seed + shots)
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["CoOp"]
    assert_cell(results.cell("Caltech101", "CoOp", 2), [53.0, 54.0])
    assert not any("differ" in note for note in results.notes)


def test_a_schedule_by_shots_splits_rows_unless_allowed_to_vary_by_column(tmp_path):
    """CoOp's schedule (50 epochs at 1 shot, 200 at 16): other settings, so other rows by default; with
    ``vary`` one row, but never one cell of two schedules."""
    for seed in (1, 2):
        run_json(tmp_path, f"ep50/1shots/seed{seed}", coop("OxfordPets", seed, 1, 50), "few_shot", 40.0 + seed)
        run_json(tmp_path, f"ep200/16shots/seed{seed}", coop("OxfordPets", seed, 16, 200), "few_shot", 80.0 + seed)
    runs = collect_runs(tmp_path).runs
    assert few_shot_results(runs).methods == ["CoOp (OPTIM.MAX_EPOCH=200)", "CoOp (OPTIM.MAX_EPOCH=50)"]
    merged = few_shot_results(runs, vary=["OPTIM.MAX_EPOCH"])
    assert merged.methods == ["CoOp"]
    assert_cell(merged.cell("OxfordPets", "CoOp", 1), [41.0, 42.0])
    assert_cell(merged.cell("OxfordPets", "CoOp", 16), [81.0, 82.0])
    # A third seed at 1 shot with 200 epochs shares a cell with the 50-epoch runs: split again.
    run_json(tmp_path, "ep200/1shots/seed3", coop("OxfordPets", 3, 1, 200), "few_shot", 60.0)
    split = few_shot_results(collect_runs(tmp_path).runs, vary=["OPTIM.MAX_EPOCH"])
    assert split.methods == ["CoOp (OPTIM.MAX_EPOCH=200)", "CoOp (OPTIM.MAX_EPOCH=50)"]
    assert_cell(split.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=50)", 1), [41.0, 42.0])
    assert_cell(split.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=200)", 1), [60.0])
    assert_cell(split.cell("OxfordPets", "CoOp (OPTIM.MAX_EPOCH=200)", 16), [81.0, 82.0])


def test_the_fewest_differing_settings_name_the_rows_and_duplicates_are_reported(tmp_path):
    # Two settings differ between these configurations; one of them tells them apart.
    run_json(tmp_path, "a/seed1", coop("EuroSAT", 1, 4, 50, OPTIM__LR=0.002), "few_shot", 60.0)
    run_json(tmp_path, "b/seed1", coop("EuroSAT", 1, 4, 100, OPTIM__LR=0.001), "few_shot", 62.0)
    run_json(tmp_path, "c/seed1", coop("EuroSAT", 1, 4, 100, OPTIM__LR=0.002), "few_shot", 64.0)
    # The same configuration and seed again, in another folder: a duplicate, the newer is used.
    run_json(tmp_path, "c_again/seed1", coop("EuroSAT", 1, 4, 100, OPTIM__LR=0.002), "few_shot", 65.0,
             finished="2024-06-01T00:00:00+00:00")
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["CoOp (OPTIM.LR=0.001, OPTIM.MAX_EPOCH=100)", "CoOp (OPTIM.LR=0.002, OPTIM.MAX_EPOCH=100)",
                               "CoOp (OPTIM.LR=0.002, OPTIM.MAX_EPOCH=50)"]
    assert_cell(results.cell("EuroSAT", "CoOp (OPTIM.LR=0.002, OPTIM.MAX_EPOCH=100)", 4), [65.0])
    assert any(f"using {tmp_path / 'c_again' / 'seed1'}, not {tmp_path / 'c' / 'seed1'}" in n for n in results.notes)


def test_a_run_read_from_its_log_compares_equal_to_its_record(tmp_path):
    """The config a log prints (tuples as ``(224, 224)``, ``1e-05``, empty strings) reads back as stored."""
    run_json(tmp_path, "record/seed1", coop("EuroSAT", 1, 4, 50), "few_shot", 60.0)
    cfg = coop("EuroSAT", 2, 4, 50)
    header = ["***************", "** Arguments **", "***************", "eval_only: False", "model_dir: ",
              "************", "** Config **", "************", *str(cfg).splitlines(), "Collecting env info ...", ""]
    write(tmp_path / "log_only" / "seed2" / "log.txt", "\n".join(header) + train_log(70.0))
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["CoOp"]
    assert_cell(results.cell("EuroSAT", "CoOp", 4), [60.0, 70.0])


def test_weights_and_records_without_a_config(tmp_path):
    cfg = coop("EuroSAT", 1, 4, 50)
    run_json(tmp_path, "w1/seed1", cfg, "few_shot", 60.0, weights={"file": "RN50.pt", "sha256": "aa" * 32})
    run_json(tmp_path, "w2/seed2", coop("EuroSAT", 2, 4, 50), "few_shot", 61.0,
             weights={"file": "RN50.pt", "sha256": "bb" * 32})
    # An old record: no config, only what schema 1 kept.
    write(tmp_path / "old" / "seed3" / "run.json", json.dumps({
        "schema": 1, "trainer": "CoOp", "dataset": "EuroSAT", "protocol": "few_shot", "shots": 4, "seed": 3,
        "subsample": "all", "backbone": "RN50", "finished": FINISHED, "metrics": {"accuracy": 50.0}}))
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["CoOp (no stored config)", "CoOp (weights aaaaaaaa)", "CoOp (weights bbbbbbbb)"]
    assert_cell(results.cell("EuroSAT", "CoOp (no stored config)", 4), [50.0])
    assert any(n.startswith("1 run(s) have no stored config") and str(tmp_path / "old" / "seed3") in n
               for n in results.notes)


# ------------------------------------------------------------------------------------------ base-to-new
def cocoop(dataset: str, seed: int, epochs: int, subsample: str):
    return full_config("CoCoOp", dataset, seed, 16, subsample, OPTIM__MAX_EPOCH=epochs)


def test_base2new_rows_follow_the_model_each_evaluation_loaded(tmp_path):
    """Seeds 1-2 trained 10 epochs, seed 3 trained 5: each test_new evaluation goes with its model."""
    for seed, epochs in ((1, 10), (2, 10), (3, 5)):
        train = run_json(tmp_path, f"train_base/ep{epochs}/seed{seed}", cocoop("DescribableTextures", seed, epochs, "base"),
                         "base2new_train", 80.0 + seed)
        # The evaluation's own config says 10 epochs for all seeds (same script): what it loaded decides.
        run_json(tmp_path, f"test_new/ep{epochs}/seed{seed}", cocoop("DescribableTextures", seed, 10, "new"),
                 "base2new_test_new", 60.0 + seed, eval_only=True, model_dir=str(train), load_epoch=epochs)
    for part in ("base", "new"):
        run_json(tmp_path, f"zs/{part}", full_config("ZeroshotCLIP", "DescribableTextures", 1, -1, part),
                 f"base2new_test_{part}", 50.0 if part == "base" else 55.0)
    table = base2new_table(collect_runs(tmp_path).runs)
    assert [keys for keys, _ in table.rows] == [["DTD", "ZeroshotCLIP"], ["DTD", "CoCoOp (OPTIM.MAX_EPOCH=10)"],
                                                ["DTD", "CoCoOp (OPTIM.MAX_EPOCH=5)"]]
    assert_cell(table.cell("DTD", "CoCoOp (OPTIM.MAX_EPOCH=10)", column="Base"), [81.0, 82.0])
    assert_cell(table.cell("DTD", "CoCoOp (OPTIM.MAX_EPOCH=10)", column="New"), [61.0, 62.0])
    assert_cell(table.cell("DTD", "CoCoOp (OPTIM.MAX_EPOCH=5)", column="Base"), [83.0])
    assert_cell(table.cell("DTD", "CoCoOp (OPTIM.MAX_EPOCH=5)", column="New"), [63.0])
    assert_cell(table.cell("DTD", "ZeroshotCLIP", column="New"), [55.0])  # base and new of one setting


# ------------------------------------------------------------------------------------------ transfer
def transfer_runs(root: Path, protocol: str, targets, n_ctx_of_seed, load_epoch_of_seed=None) -> None:
    """CoOp trained on ImageNet (N_CTX per seed) and evaluations of each model on ``targets``."""
    for seed, n_ctx in n_ctx_of_seed.items():
        trained = run_json(root, f"imagenet/CoOp/nctx{n_ctx}/seed{seed}",
                           coop("ImageNet", seed, 16, 50, TRAINER__COOP__N_CTX=n_ctx), "few_shot", 70.0 + seed)
        epoch = (load_epoch_of_seed or {}).get(seed)
        for i, target in enumerate(targets):
            cfg = full_config("CoOp", target, seed, 16, OPTIM__MAX_EPOCH=50, TRAINER__COOP__N_CTX=n_ctx)
            run_json(root, f"eval/{target}/nctx{n_ctx}/seed{seed}", cfg, protocol, 40.0 + 10 * i + seed,
                     eval_only=True, model_dir=str(trained), load_epoch=epoch, source_dataset="ImageNet")


def test_cross_dataset_rows_follow_the_trained_model(tmp_path):
    transfer_runs(tmp_path, "cross_dataset", ["Caltech101", "OxfordPets"], {1: 16, 2: 16, 3: 4})
    table = cross_dataset_table(collect_runs(tmp_path).runs)
    assert [keys[0] for keys, _ in table.rows] == ["CoOp (TRAINER.COOP.N_CTX=16)", "CoOp (TRAINER.COOP.N_CTX=4)"]
    assert_cell(table.cell("CoOp (TRAINER.COOP.N_CTX=16)", column="ImageNet"), [71.0, 72.0])
    assert_cell(table.cell("CoOp (TRAINER.COOP.N_CTX=16)", column="OxfordPets"), [51.0, 52.0])
    assert_cell(table.cell("CoOp (TRAINER.COOP.N_CTX=4)", column="ImageNet"), [73.0])
    assert table.cell("CoOp (TRAINER.COOP.N_CTX=4)", column="Average").mean == pytest.approx((43.0 + 53.0) / 2)


def test_dg_rows_part_evaluations_of_another_epoch(tmp_path):
    from vlprompt.results.runs import DG_TARGETS

    transfer_runs(tmp_path, "domain_generalization", DG_TARGETS, {1: 16, 2: 16, 3: 16}, load_epoch_of_seed={3: 25})
    table = dg_table(collect_runs(tmp_path).runs)
    assert [keys[0] for keys, _ in table.rows] == ["CoOp", "CoOp (load-epoch 25)"]
    assert_cell(table.cell("CoOp", column="ImageNet-V2"), [41.0, 42.0])
    assert_cell(table.cell("CoOp (load-epoch 25)", column="ImageNet-R"), [73.0])
    assert_cell(table.cell("CoOp", column="ImageNet"), [71.0, 72.0])
    # --load-epoch of the last epoch is the trained model itself: the same row.
    transfer_runs(tmp_path / "more", "domain_generalization", DG_TARGETS, {4: 16}, load_epoch_of_seed={4: 50})
    table = dg_table(collect_runs(tmp_path).runs)
    assert_cell(table.cell("CoOp", column="ImageNet-V2"), [41.0, 42.0, 44.0])


def test_runs_left_out_are_reported(tmp_path):
    transfer_runs(tmp_path, "cross_dataset", ["OxfordPets"], {1: 16})
    cfg = full_config("CoOp", "EuroSAT", 1, 16)
    run_json(tmp_path, "from_caltech", cfg, "cross_dataset", 30.0, eval_only=True, source_dataset="Caltech101")
    write(tmp_path / "no_accuracy" / "run.json", json.dumps({
        "trainer": "ZeroshotCLIP", "dataset": "OxfordPets", "protocol": "zeroshot", "seed": -1, "shots": -1,
        "subsample": "all", "finished": FINISHED, "metrics": {"macro_f1": 40.0}}))
    table = cross_dataset_table(collect_runs(tmp_path).runs)
    assert any(f"{tmp_path / 'from_caltech'}: left out, it evaluates a model trained on Caltech101" in n
               for n in table.notes)
    assert (f"1 run(s) left out: their result has no accuracy (e.g. {tmp_path / 'no_accuracy'}; they have macro_f1; "
            "--metric chooses)") in table.notes


# ------------------------------------------------------------------------------------------ TPT
def tpt_run(root: Path, rel: str, seed: int, results: dict, init: str, load: str = "", **extra) -> Path:
    cfg = full_config("TPT", "", seed, TRAINER__TPT__LOAD=load, TRAINER__TPT__TEST_SETS="/".join(results))
    folder = run_json(root, rel, cfg, "tpt", float(np.mean(list(results.values()))),
                      metrics_per_dataset={k: {"accuracy": v} for k, v in results.items()},
                      tpt={"init": init, "init_detail": "...", "shard": ""}, **extra)
    return folder


def test_tpt_rows_never_mix_initialisations(tmp_path):
    """The issue: ImageNet-A from the CoOp-initialised run, ImageNet-R from the words run, one TPT row."""
    coop_dirs = [run_json(tmp_path, f"imagenet/CoOp/seed{s}", coop("ImageNet", s, 16, 50), "few_shot", 63.0)
                 for s in (1, 2)]
    tpt_run(tmp_path, "tpt/words/seed1", 1, {"R": 77.0}, "words")
    # TPT from each CoOp seed's context (TRAINER.TPT.LOAD names the checkpoint file): one setting.
    for seed, folder in zip((1, 2), coop_dirs):
        tpt_run(tmp_path, f"tpt/coop/seed{seed}", seed, {"A": 54.0 + seed}, "coop",
                load=str(folder / "prompt_learner" / "model.pth.tar-50"))
    shifts = tpt_tables(collect_runs(tmp_path).runs)[0]
    from_coop = "TPT (from CoOp ctx: imagenet/CoOp/seed*)"
    assert [keys[0] for keys, _ in shifts.rows] == [from_coop, "TPT (from words)"]
    assert_cell(shifts.cell(from_coop, column="ImageNet-A"), [55.0, 56.0])
    assert shifts.cell(from_coop, column="ImageNet-R") is None
    assert_cell(shifts.cell("TPT (from words)", column="ImageNet-R"), [77.0])
    assert shifts.cell("TPT (from words)", column="ImageNet-A") is None
    assert shifts.cell("TPT (from words)", column="Average") is None  # no average over both
    assert any(n.startswith("TPT: runs whose settings differ") for n in shifts.notes)


def test_tpt_from_two_coop_runs_or_a_model_dir_that_is_gone(tmp_path):
    long_run = run_json(tmp_path, "imagenet/CoOp_ep200/seed1", coop("ImageNet", 1, 16, 200), "few_shot", 65.0)
    short_run = run_json(tmp_path, "imagenet/CoOp_ep50/seed1", coop("ImageNet", 1, 16, 50), "few_shot", 63.0)
    tpt_run(tmp_path, "tpt/long", 1, {"A": 60.0}, "coop", model_dir=str(long_run), load_epoch=200)
    tpt_run(tmp_path, "tpt/short", 1, {"A": 58.0}, "coop", model_dir=str(short_run), load_epoch=50)
    tpt_run(tmp_path, "tpt/lost", 1, {"A": 50.0}, "coop", model_dir="/gone/imagenet/CoOp_x/seed1", load_epoch=50)
    table = tpt_tables(collect_runs(tmp_path).runs)[0]
    rows = [keys[0] for keys, _ in table.rows]
    assert rows == ["TPT (from CoOp ctx: /gone/imagenet/CoOp_x/seed*)", "TPT (from CoOp ctx: imagenet/CoOp_ep200/seed*)",
                    "TPT (from CoOp ctx: imagenet/CoOp_ep50/seed*)"]
    assert any("loaded a model that was not found" in n and "/gone/imagenet/CoOp_x/seed1" in n for n in table.notes)


# ------------------------------------------------------------------------------------------ command line
def test_tables_command_vary_by_column(tmp_path, capsys):
    for seed in (1, 2):
        run_json(tmp_path, f"ep50/seed{seed}", coop("OxfordPets", seed, 1, 50), "few_shot", 40.0 + seed)
        run_json(tmp_path, f"ep200/seed{seed}", coop("OxfordPets", seed, 16, 200), "few_shot", 80.0 + seed)
    assert tables_main([str(tmp_path), "--protocol", "few_shot"]) == 0
    out = capsys.readouterr().out
    assert "| OxfordPets | CoOp (OPTIM.MAX_EPOCH=200) | – | 81.50 ± 0.50 (2) |" in out
    assert tables_main([str(tmp_path), "--protocol", "few_shot", "--vary-by-column", "OPTIM.MAX_EPOCH"]) == 0
    assert "| OxfordPets | CoOp | 41.50 ± 0.50 (2) | 81.50 ± 0.50 (2) |" in capsys.readouterr().out
    # A run no table shows (trained on all the data) is named, not passed over.
    run_json(tmp_path, "full/seed1", coop("OxfordPets", 1, -1, 50), "full", 90.0)
    assert tables_main([str(tmp_path)]) == 0
    assert (f"Note: 1 run(s) trained on all the data (protocol full) are in no table, e.g. {tmp_path / 'full' / 'seed1'}"
            in capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ figures
def figure_results(root: Path):
    """Zero-shot CLIP, the linear probe, CoCoOp and CoOp on two datasets; CoCoOp lacks Caltech101 (so a
    panel's own method order differs from the table's), and the lowest points lie at 16 shots, low right."""
    from test_results import record

    record(root, "zs/pets", "ZeroshotCLIP", "OxfordPets", "zeroshot", -1, 85.0)
    record(root, "zs/caltech", "ZeroshotCLIP", "Caltech101", "zeroshot", -1, 86.0)
    curves = {"LinearProbeCLIP": [60, 70, 80, 40], "CoCoOp": [82, 84, 86, 41], "CoOp": [81, 83, 85, 42]}
    for method, values in curves.items():
        for dataset in ("OxfordPets", "Caltech101"):
            if method == "CoCoOp" and dataset == "Caltech101":
                continue
            for shots, value in zip((1, 2, 4, 16), values):
                for seed in (1, 2):
                    record(root, f"{dataset}/{method}/{shots}/seed{seed}", method, dataset, "few_shot", seed,
                           value + seed / 2, shots=shots)
    return few_shot_results(collect_runs(root).runs)


@pytest.fixture
def drawn(tmp_path, monkeypatch):
    """The figures plot_few_shot draws (by file name), kept instead of only saved."""
    pytest.importorskip("matplotlib")
    from vlprompt.results import plots

    figures = {}
    real_save = plots.save_figure

    def keep(figure, path, dpi=120):
        figures[Path(path).name] = figure
        return real_save(figure, path, dpi=40)

    monkeypatch.setattr(plots, "save_figure", keep)
    paths = plots.plot_few_shot(figure_results(tmp_path / "out"), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["Caltech101.png", "OxfordPets.png", "average.png"]
    return figures


def line_styles(figure) -> dict[str, tuple]:
    ax = figure.axes[0]
    return {line.get_label(): (line.get_color(), line.get_marker(), line.get_linestyle())
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_each_method_keeps_its_colour_and_marker_in_every_figure(drawn):
    styles = {name: line_styles(figure) for name, figure in drawn.items()}
    assert "CoCoOp" not in styles["Caltech101.png"] and "CoCoOp" in styles["OxfordPets.png"]
    for method in ("ZeroshotCLIP (zero-shot)", "LinearProbeCLIP", "CoOp"):
        assert len({styles[name][method] for name in drawn}) == 1, method
    everyone = styles["OxfordPets.png"]
    assert len({(color, marker) for color, marker, _ in everyone.values()}) == len(everyone)  # all distinct
    zero_shot = everyone.pop("ZeroshotCLIP (zero-shot)")
    assert zero_shot[1] == "*" and zero_shot[2] == "None"  # a star, no line
    assert zero_shot[0] not in {color for color, _, _ in everyone.values()}  # a colour no method has
    assert everyone["LinearProbeCLIP"][2] == ":" and everyone["CoOp"][2] == everyone["CoCoOp"][2] == "-"


def test_the_legend_never_covers_a_point(drawn):
    for name, figure in drawn.items():
        figure.canvas.draw()
        ax = figure.axes[0]
        legend = ax.get_legend().get_window_extent()
        assert not legend.overlaps(ax.get_window_extent()), name  # beside the axes, not on them
        for line in ax.get_lines():
            for x, y in ax.transData.transform(line.get_xydata()):
                assert not legend.contains(x, y), (name, line.get_label())


def test_average_png_even_for_one_dataset(tmp_path):
    pytest.importorskip("matplotlib")
    from vlprompt.results.plots import plot_few_shot

    results = figure_results(tmp_path / "out")
    one = few_shot_results(collect_runs(tmp_path / "out").runs, datasets=["OxfordPets"])
    assert results.datasets == ["Caltech101", "OxfordPets"]
    paths = plot_few_shot(one, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["OxfordPets.png", "average.png"]


# ------------------------------------------------------------------------------------------ tensorboard
def test_no_tensorboard_folder_without_tensorboard(tmp_path, monkeypatch):
    import sys
    import types

    from vlprompt.engine.logging import TensorboardWriter

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not installed
    writer = TensorboardWriter(str(tmp_path / "a" / "tensorboard"))
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    assert not (tmp_path / "a").exists()

    made = []
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = lambda log_dir: made.append(log_dir) or types.SimpleNamespace(close=lambda: None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    TensorboardWriter(str(tmp_path / "b" / "tensorboard")).close()
    assert (tmp_path / "b" / "tensorboard").is_dir() and made == [str(tmp_path / "b" / "tensorboard")]


# ------------------------------------------------------------------------------------------ parse_test_res
def test_parse_test_res_names_seed_folders_of_other_settings(tmp_path, capsys):
    from vlprompt.results.parse import main as parse_main

    exp = tmp_path / "exp"
    for seed, epochs, acc in ((1, 50, 80.0), (2, 50, 82.0), (3, 5, 30.0)):
        run_json(exp, f"seed{seed}", coop("OxfordPets", seed, 1, epochs), "few_shot", acc)
        write(exp / f"seed{seed}" / "log.txt", train_log(acc))
    assert parse_main([str(exp)]) == 0
    captured = capsys.readouterr()
    assert "* accuracy: 64.00% +- 24.06%" in captured.out  # the reference's average, unchanged
    assert captured.err == (f"Note: {exp}: seed3 has other settings than seed1, yet is averaged with it:\n"
                            "OPTIM.MAX_EPOCH: seed1 50, seed3 5\n")
    import shutil

    shutil.rmtree(exp / "seed3")
    assert parse_main([str(exp)]) == 0
    assert capsys.readouterr().err == ""


def test_zero_shot_runs_of_other_training_schedules_are_one_row(tmp_path):
    """Zero-shot CLIP trains nothing: the epochs of the config file it was given are no setting of it."""
    for dataset, epochs in (("OxfordPets", 50), ("OxfordPets", 200)):
        run_json(tmp_path, f"zs/{dataset}/ep{epochs}", full_config("ZeroshotCLIP", dataset, epochs // 50, -1,
                                                                  OPTIM__MAX_EPOCH=epochs), "zeroshot", 85.0)
    run_json(tmp_path, "zs/other_prompt", full_config("ZeroshotCLIP", "OxfordPets", 9, -1,
                                                      MODEL__BACKBONE__NAME="ViT-B/16"), "zeroshot", 88.0)
    results = few_shot_results(collect_runs(tmp_path).runs)
    assert results.methods == ["ZeroshotCLIP (MODEL.BACKBONE.NAME=RN50)", "ZeroshotCLIP (MODEL.BACKBONE.NAME=ViT-B/16)"]
    assert_cell(results.cell("OxfordPets", "ZeroshotCLIP (MODEL.BACKBONE.NAME=RN50)", 0), [85.0, 85.0])
