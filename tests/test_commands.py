"""The ``vlprompt`` command: every subcommand and its --help, shipped configs from any directory, TPT's flags
mapped to our keys (and a run through them equal to train.py's), ``list``, and one-line usage errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, config_file

import vlprompt
from vlprompt import cli, commands
from vlprompt.commands import COMMANDS, check_cocoop_start, main, replace_flag_value, select_gpu, tpt_parser
from vlprompt.engine.progress import PROGRESS_ENV
from vlprompt.errors import UsageError
from vlprompt.resources import configs_dir, resolve_config_path, shipped_configs
from vlprompt.tiny_clip import save_tiny_clip


def one_error(capsys, call) -> str:
    """Run ``call``; it must end with status 2 (returned or exited) and exactly one line on stderr, returned."""
    try:
        status = call()
    except SystemExit as exited:
        status = exited.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------------------------------ dispatcher
def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: vlprompt [-h] [--version] COMMAND [ARGS ...]")
    for command in COMMANDS:
        assert f"\n  {command.name:<10}  {command.summary}\n" in printed
    assert [c.name for c in COMMANDS] == ["train", "tpt", "check-data", "tables", "plot", "interpret", "demo", "list"]


@pytest.mark.parametrize("name", [command.name for command in COMMANDS])
def test_each_command_has_help_under_its_own_name(name, capsys):
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: vlprompt {name} ")
    assert sys.argv[0] != f"vlprompt {name}"  # the program name is given back


def test_help_lists_the_choices(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "trainers: CTPT, CoCoOp, CoOp, GenPT, LinearProbeCLIP, MTA, TDA, TPT, Zero, ZeroshotCLIP" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["tpt", "--help"])
    tpt_help = capsys.readouterr().out
    assert "--test_sets TEST_SETS" in tpt_help and "Flower102" in tpt_help and "--tta_steps" in tpt_help


def test_unknown_command_and_missing_arguments(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["trian"])
    assert exited.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "vlprompt train: error: nothing to run; e.g. vlprompt train --root DATA" in capsys.readouterr().err


def test_python_dash_m_vlprompt(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlprompt", "--version"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0 and proc.stdout == f"vlprompt {vlprompt.__version__}\n", proc.stderr


# -------------------------------------------------------------------------------------- shipped configs
def test_configs_dir_is_the_checkouts_here():
    assert configs_dir() == REPO_ROOT / "configs"
    assert "trainers/CoOp/vit_b16.yaml" in shipped_configs() and "datasets/oxford_pets.yaml" in shipped_configs()


def test_only_missing_relative_configs_paths_are_resolved(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "mine").mkdir(parents=True)
    (tmp_path / "configs" / "mine" / "a.yaml").write_text("OPTIM: {LR: 0.1}\n")
    assert resolve_config_path("configs/mine/a.yaml") == "configs/mine/a.yaml"  # the user's own file wins
    assert resolve_config_path("elsewhere/x.yaml") == "elsewhere/x.yaml"  # reported by the loader as before
    assert resolve_config_path("/abs/configs/x.yaml") == "/abs/configs/x.yaml"
    assert resolve_config_path("") == ""
    with caplog.at_level("INFO", logger="vlprompt"):
        shipped = resolve_config_path("./configs/datasets/oxford_pets.yaml")
    assert shipped == str(REPO_ROOT / "configs" / "datasets" / "oxford_pets.yaml")
    assert f"using vlprompt's shipped copy {shipped}" in caplog.text


def test_config_flag_values_are_replaced_in_both_spellings():
    argv = ["--config-file=configs/a.yaml", "--dataset-config-file", "configs/b.yaml", "KEY", "configs/b.yaml"]
    assert replace_flag_value(argv, "configs/a.yaml", "/x/a.yaml")[0] == "--config-file=/x/a.yaml"
    assert replace_flag_value(argv, "configs/b.yaml", "/x/b.yaml")[1:] == [
        "--dataset-config-file", "/x/b.yaml", "KEY", "configs/b.yaml"]


def tiny_coop(root: str, tiny_vit: str) -> list[str]:
    return ["--root", root, "--trainer", "CoOp", "--seed", "1", "MODEL.BACKBONE.NAME", tiny_vit,
            "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "DATALOADER.NUM_WORKERS", "0"]


def test_train_runs_from_any_directory_with_the_shipped_configs(pets_root, tiny_vit, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = tiny_coop(pets_root, tiny_vit)
    assert main(["train", *args[:6], "--config-file", "configs/trainers/CoOp/vit_b16.yaml",
                 "--dataset-config-file=configs/datasets/oxford_pets.yaml", "--output-dir", "here", *args[6:]]) == 0
    printed = capsys.readouterr().out
    shipped = REPO_ROOT / "configs" / "trainers" / "CoOp" / "vit_b16.yaml"
    assert f"configs/trainers/CoOp/vit_b16.yaml is not in the working directory; using vlprompt's shipped copy " \
           f"{shipped}\n" in printed
    log = (tmp_path / "here" / "log.txt").read_text()
    assert f"config_file: {shipped}\n" in log
    # The same run as train.py with the files' full paths: the same numbers.
    reference = cli.main([*args[:6], "--config-file", config_file("trainers/CoOp/vit_b16.yaml"), "--dataset-config-file",
                          config_file("datasets/oxford_pets.yaml"), "--output-dir", str(tmp_path / "ref"), *args[6:]])
    record = json.loads((tmp_path / "here" / "run.json").read_text())
    assert record["metrics"]["accuracy"] == pytest.approx(reference.test_results["accuracy"], abs=0)


def test_a_config_found_nowhere_is_one_error_with_the_closest_names(pets_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    error = one_error(capsys, lambda: main(["train", "--root", pets_root, "--trainer", "CoOp", "--config-file",
                                            "configs/trainers/CoOp/vit_b61.yaml"]))
    assert error.startswith("vlprompt train: error: config file not found: configs/trainers/CoOp/vit_b61.yaml is "
                            f"neither in the working directory ({tmp_path}) nor among vlprompt's shipped config files")
    assert "did you mean configs/trainers/CoOp/vit_b16.yaml" in error and "vlprompt list configs" in error
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------- tpt
def test_tpt_flags_map_to_our_keys():
    args = tpt_parser().parse_args([
        "--root", "D", "--test_sets", "A/R", "-a", "ViT-B/16", "-b", "32", "--tta_steps", "2", "--selection_p", "0.2",
        "--lr", "0.01", "--ctx_init", "a_photo_of_a", "--n_ctx", "8", "--load", "ck.pth", "-j", "2", "-p", "50",
        "--seed", "3", "--tpt", "TRAINER.TPT.BATCH_IMAGES", "4"])
    argv = commands.tpt_train_argv(args)
    assert argv == [
        "--root", "D", "--trainer", "TPT", "--config-file", config_file("trainers/TPT/vit_b16.yaml"), "--seed", "3",
        "--output-dir", "output/tpt/vit_b16/coop/A_R/seed3",
        "TRAINER.TPT.N_VIEWS", "32", "TRAINER.TPT.STEPS", "2", "TRAINER.TPT.SELECTION_P", "0.2", "TRAINER.TPT.LR", "0.01",
        "TRAINER.TPT.CTX_INIT", "a_photo_of_a", "TRAINER.TPT.N_CTX", "8", "TRAINER.TPT.LOAD", "ck.pth",
        "DATALOADER.NUM_WORKERS", "2", "TRAINER.TPT.PRINT_FREQ", "50", "TRAINER.TPT.TEST_SETS", "A/R",
        "TRAINER.TPT.BATCH_IMAGES", "4"]
    cfg = cli.setup_cfg(cli.build_parser().parse_args(argv))
    tpt = cfg.TRAINER.TPT
    assert (tpt.N_VIEWS, tpt.STEPS, tpt.SELECTION_P, tpt.LR, tpt.CTX_INIT, tpt.N_CTX, tpt.LOAD, tpt.PRINT_FREQ) == (
        32, 2, 0.2, 0.01, "a_photo_of_a", 8, "ck.pth", 50)
    assert (tpt.TEST_SETS, tpt.BATCH_IMAGES, cfg.MODEL.BACKBONE.NAME, cfg.SEED, cfg.DATALOADER.NUM_WORKERS) == (
        "A/R", 4, "ViT-B/16", 3, 2)


def test_tpt_defaults_are_the_references():
    argv = commands.tpt_train_argv(tpt_parser().parse_args(["--root", "D", "--test-sets", "I"]))
    assert argv == ["--root", "D", "--trainer", "TPT", "--config-file", config_file("trainers/TPT/rn50.yaml"),
                    "--seed", "0", "--output-dir", "output/tpt/rn50/words/I/seed0", "TRAINER.TPT.TEST_SETS", "I"]
    cfg = cli.setup_cfg(cli.build_parser().parse_args(argv))
    tpt = cfg.TRAINER.TPT  # TPT's defaults: -b 64, --selection_p 0.1, --tta_steps 1, --lr 5e-3, RN50, seed 0
    assert (tpt.N_VIEWS, tpt.SELECTION_P, tpt.STEPS, tpt.LR, cfg.MODEL.BACKBONE.NAME, cfg.SEED) == (
        64, 0.1, 1, 0.005, "RN50", 0)
    # Another backbone starts from RN50's config; an empty --ctx-init means random context vectors.
    argv = commands.tpt_train_argv(tpt_parser().parse_args(["--root", "D", "--test-sets", "K", "-a", "RN101",
                                                            "--ctx-init", "", "--resolution", "288"]))
    cfg = cli.setup_cfg(cli.build_parser().parse_args(argv))
    assert (cfg.MODEL.BACKBONE.NAME, cfg.TRAINER.TPT.CTX_INIT, tuple(cfg.INPUT.SIZE)) == ("RN101", "", (288, 288))
    assert "output/tpt/rn101/words/K/seed0" in argv


@pytest.mark.parametrize(("flags", "message"), [
    ([], "vlprompt tpt needs --test-sets (e.g. A/R/V/K/I) or --dataset-config-file"),
    (["--test-sets", "A", "--cocoop"], "--cocoop starts from a CoCoOp checkpoint: give it with --load FILE"),
    (["--test-sets", "A", "--load", "a.pth", "--model-dir", "run"], "both name a start; give one"),
    (["--test-sets", "A", "--load-epoch", "5"], "--load-epoch picks an epoch of --model-dir; give --model-dir too"),
    (["--test-sets", "A", "--gpu", "first"], '--gpu "first": give a GPU index (0, 1, ...) or -1 for the CPU'),
])
def test_tpt_usage_mistakes_are_one_line(capsys, tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    error = one_error(capsys, lambda: main(["tpt", "--root", str(tmp_path), *flags]))
    assert error.startswith("vlprompt tpt: error: ") and message in error
    assert not list(tmp_path.iterdir())


def test_cocoop_flag_checks_the_checkpoint_kind(tmp_path, capsys):
    coop, cocoop = tmp_path / "coop.pth", tmp_path / "cocoop.pth"
    torch.save({"state_dict": {"ctx": torch.zeros(4, 8)}}, coop)
    torch.save({"state_dict": {"ctx": torch.zeros(4, 8), "meta_net.linear1.weight": torch.zeros(2, 8)}}, cocoop)
    check_cocoop_start(str(cocoop), None)
    error = one_error(capsys, lambda: main(["tpt", "--root", str(tmp_path), "--test-sets", "A", "--cocoop", "--load",
                                            str(coop)]))
    assert "is a coop checkpoint, not a CoCoOp one (ctx + meta_net.*); drop --cocoop" in error and str(coop) in error


def test_gpu_flag_selects_a_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert select_gpu("1") == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert select_gpu("1") == [] and os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # an index among the visible ones
    with pytest.raises(UsageError, match=r"CUDA_VISIBLE_DEVICES=3 makes 1 GPU\(s\) visible; give an index below 1"):
        select_gpu("1")  # now only "3" is visible
    assert select_gpu("-1") == select_gpu("cpu") == ["USE_CUDA", "False"]
    assert select_gpu(None) == []


def test_tpt_command_equals_train_py_and_shows_its_progress(pets_root, tmp_path, monkeypatch, capsys):
    """``vlprompt tpt`` with TPT's flags gives train.py's result for the same keys; the per-image bar (forced on
    here) goes to stderr only, and TPT's own lines stay as they are."""
    vit64 = str(save_tiny_clip(tmp_path / "vit64.pt", "vit", image_resolution=64))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert main(["tpt", "--root", pets_root, "--dataset-config-file", "configs/datasets/oxford_pets.yaml",
                 "-a", vit64, "--resolution", "64", "-b", "4", "--selection_p", "0.25", "--ctx_init", "a_photo_of_a",
                 "-j", "0", "-p", "5", "--seed", "1", "TRAINER.TPT.PREC", "fp32"]) == 0
    printed = capsys.readouterr()
    out = tmp_path / "output" / "tpt" / "vit64" / "words" / "oxford_pets" / "seed1"
    record = json.loads((out / "run.json").read_text())
    assert record["protocol"] == "tpt" and record["tpt"]["n_views"] == 4 and record["tpt"]["selection_p"] == 0.25
    assert re.search(r"TPT OxfordPets: +\d+%\|[^|]*\| \d+/20 \[", printed.err)
    assert re.search(r"Test: \[ 4/20\]\tTime +[\d.]+ \( *[\d.]+\)\tAcc@1", printed.out)
    log = (out / "log.txt").read_text()
    for text in (printed.out, log):
        assert not re.search(r"img/s|s/img|\r|\d+%\|", text)

    monkeypatch.setenv(PROGRESS_ENV, "0")
    reference = cli.main(["--root", pets_root, "--trainer", "TPT", "--config-file", config_file("trainers/TPT/rn50.yaml"),
                          "--dataset-config-file", config_file("datasets/oxford_pets.yaml"), "--seed", "1",
                          "--output-dir", str(tmp_path / "ref"), "MODEL.BACKBONE.NAME", vit64, "INPUT.SIZE", "(64, 64)",
                          "TRAINER.TPT.N_VIEWS", "4", "TRAINER.TPT.SELECTION_P", "0.25", "TRAINER.TPT.CTX_INIT",
                          "a_photo_of_a", "DATALOADER.NUM_WORKERS", "0", "TRAINER.TPT.PREC", "fp32"])
    assert record["metrics"]["accuracy"] == reference.test_results["accuracy"]
    assert record["metrics"]["top5_accuracy"] == reference.test_results["top5_accuracy"]
    ours = (out / "tpt_predictions" / "OxfordPets.jsonl").read_text().splitlines()[1:]
    theirs = (tmp_path / "ref" / "tpt_predictions" / "OxfordPets.jsonl").read_text().splitlines()[1:]
    assert ours == theirs


# ------------------------------------------------------------------------------------- the other commands
def test_list_shows_trainers_datasets_backbones_and_configs(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VLPROMPT_CLIP_DIR", str(tmp_path))
    (tmp_path / "RN50.pt").write_bytes(b"")
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\n  CoOp +16 configs\n", printed) and "\n  ZeroshotCLIP\n" in printed
    assert re.search(r"\n  OxfordPets +configs/datasets/oxford_pets.yaml\n", printed)
    assert re.search(r"\n  RN50 +present\n", printed) and re.search(r"\n  ViT-B/16 +absent", printed)
    assert re.search(r"\n  micro-clip +bundled with vlprompt\n", printed)
    assert "\n  configs/trainers/TPT/vit_b16.yaml\n" in printed
    assert main(["list", "trainers"]) == 0
    assert "Datasets" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["list", "models"])
    assert exited.value.code == 2 and "unknown models; choose from trainers, datasets" in capsys.readouterr().err


def test_check_data_and_plot_reach_their_entry_points(pets_root, monkeypatch, capsys):
    assert main(["check-data", "--root", pets_root, "--dataset", "oxford_pets", "--no-images"]) == 0
    assert "OxfordPets" in capsys.readouterr().out
    forwarded = []
    from vlprompt.results import cli as results_cli

    monkeypatch.setattr(results_cli, "main", lambda argv: forwarded.append(argv) or 0)
    assert main(["plot", "out1", "out2", "--output-dir", "figs", "--datasets", "OxfordPets"]) == 0
    assert forwarded == [["out1", "out2", "--protocol", "few_shot", "--plot", "figs", "--output-dir", "figs",
                          "--datasets", "OxfordPets"]]


def test_a_users_mistake_in_a_delegated_command_is_one_line(capsys, tmp_path):
    error = one_error(capsys, lambda: main(["interpret", str(tmp_path / "missing.pth"), "3"]))
    assert "missing.pth" in error
    assert Path(sys.argv[0]).name != "vlprompt interpret"
