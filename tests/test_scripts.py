"""The protocol scripts end to end (subprocess, tiny CLIP, synthetic OxfordPets), run from a directory that
is not the repository: CoOp's output layout, skipping complete runs, resuming unfinished ones, the CoCoOp
base-to-new and cross-dataset pairs, and the DATA check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CFG = "vit_b16"
COCOOP_CFG = "vit_b16_c4_ep10_batch1_ctxv1"


def tiny_opts(tiny_vit: str, epochs: int = 1, shots: int | None = None) -> list[str]:
    """Trailing KEY VALUE pairs every script passes through to train.py (after its own, so they win)."""
    return [*(["DATASET.NUM_SHOTS", str(shots)] if shots else []), "MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TEST.BATCH_SIZE", "20", "TRAIN.PRINT_FREQ", "100"]


def run_script(script: str, *args: str, data: str | None, output: Path, cwd: Path, **env_vars: str):
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    env.update(SEEDS="1", PYTHON=sys.executable, OUTPUT_ROOT=str(output), VLPROMPT_OFFLINE="1", **env_vars)
    if data is not None:
        env["DATA"] = data
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    """A working directory outside the repository: the scripts must not depend on where they start."""
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def coop_run(pets_root, tiny_vit, tmp_path_factory, elsewhere):
    """main.sh oxford_pets vit_b16 end 16 16 False: two epochs, a checkpoint after each."""
    output = tmp_path_factory.mktemp("output")
    result = run_script("coop/main.sh", "oxford_pets", CFG, "end", "16", "16", "False",
                        *tiny_opts(tiny_vit, epochs=2), "TRAIN.CHECKPOINT_FREQ", "1",
                        data=pets_root, output=output, cwd=elsewhere)
    ok(result)
    return output, output / f"oxford_pets/CoOp/{CFG}_16shots/nctx16_cscFalse_ctpend/seed1"


def test_coop_main_layout_skip_and_resume(pets_root, tiny_vit, coop_run, elsewhere):
    output, run_dir = coop_run
    assert sorted(p.name for p in (run_dir / "prompt_learner").iterdir()) == [
        "checkpoint", "model.pth.tar-1", "model.pth.tar-2"]
    assert (run_dir / "run.json").is_file() and "* accuracy:" in (run_dir / "log.txt").read_text()
    assert not list(elsewhere.iterdir())  # nothing written where the script was started

    args = ("coop/main.sh", "oxford_pets", CFG, "end", "16", "16", "False", *tiny_opts(tiny_vit, epochs=2))
    skipped = ok(run_script(*args, data=pets_root, output=output, cwd=elsewhere))
    assert skipped.strip() == f"Oops! The results exist at {run_dir} (so skip this job)"
    assert not list(run_dir.glob("log.txt-*"))  # train.py did not run

    # A run killed during epoch 2: a checkpoint of epoch 1, no result record. It resumes from epoch 1.
    (run_dir / "run.json").unlink()
    (run_dir / "prompt_learner" / "model.pth.tar-2").unlink()
    (run_dir / "prompt_learner" / "checkpoint").write_text("model.pth.tar-1\n")
    resumed = ok(run_script(*args, data=pets_root, output=output, cwd=elsewhere))
    assert f"Resuming the unfinished run at {run_dir}" in resumed
    assert "Found checkpoint at" in resumed and "epoch [2/2]" in resumed and "epoch [1/2]" not in resumed
    assert (run_dir / "prompt_learner" / "model.pth.tar-2").is_file() and (run_dir / "run.json").is_file()


def test_coop_eval_loads_the_imagenet_model(pets_root, coop_run, tiny_vit, elsewhere):
    output, run_dir = coop_run
    # eval.sh reads output/imagenet/CoOp/...: here the OxfordPets-trained model stands in for it.
    source = output / f"imagenet/CoOp/{CFG}_16shots/nctx16_cscFalse_ctpend/seed1"
    shutil.copytree(run_dir, source)
    printed = ok(run_script("coop/eval.sh", "oxford_pets", CFG, *tiny_opts(tiny_vit),
                            data=pets_root, output=output, cwd=elsewhere, LOADEP="2"))
    eval_dir = output / f"evaluation/CoOp/{CFG}_16shots/nctx16_cscFalse_ctpend/oxford_pets/seed1"
    model = source / "prompt_learner" / "model.pth.tar-2"
    assert f'Loading weights to prompt_learner from "{model}" (epoch = 2)' in printed
    assert (eval_dir / "run.json").is_file() and "* accuracy:" in (eval_dir / "log.txt").read_text()


def test_coop_zeroshot(pets_root, tiny_vit, tmp_path, elsewhere):
    printed = ok(run_script("coop/zeroshot.sh", "oxford_pets", CFG, *tiny_opts(tiny_vit),
                            data=pets_root, output=tmp_path, cwd=elsewhere))
    assert "Loading trainer: ZeroshotCLIP" in printed and "* accuracy:" in printed
    assert (tmp_path / f"ZeroshotCLIP/{CFG}/oxford_pets/run.json").is_file()


def test_cocoop_base_to_new_train_then_test(pets_root, tiny_vit, tmp_path, elsewhere):
    ok(run_script("cocoop/base2new_train.sh", "oxford_pets", "1", *tiny_opts(tiny_vit, shots=2),
                  data=pets_root, output=tmp_path, cwd=elsewhere))
    tail = f"oxford_pets/shots_16/CoCoOp/{COCOOP_CFG}/seed1"
    train_dir = tmp_path / "base2new/train_base" / tail
    assert (train_dir / "prompt_learner" / "model.pth.tar-1").is_file()
    assert "SUBSAMPLE BASE CLASSES!" in (train_dir / "log.txt").read_text()

    # The epoch to load comes from the trained run (1 here), not a hand-edited LOADEP.
    printed = ok(run_script("cocoop/base2new_test.sh", "oxford_pets", "1", *tiny_opts(tiny_vit),
                            data=pets_root, output=tmp_path, cwd=elsewhere))
    test_dir = tmp_path / "base2new/test_new" / tail
    model = train_dir / "prompt_learner" / "model.pth.tar-1"
    assert f'Loading weights to prompt_learner from "{model}" (epoch = 1)' in printed
    assert "SUBSAMPLE NEW CLASSES!" in printed
    assert (test_dir / "run.json").is_file()


def test_cocoop_cross_dataset_train_then_test(pets_root, tiny_vit, tmp_path, elsewhere):
    ok(run_script("cocoop/xd_train.sh", "1", *tiny_opts(tiny_vit, shots=2), data=pets_root, output=tmp_path, cwd=elsewhere,
                  SOURCE_DATASET="oxford_pets"))
    train_dir = tmp_path / f"oxford_pets/CoCoOp/{COCOOP_CFG}_16shots/seed1"
    assert (train_dir / "prompt_learner" / "model.pth.tar-1").is_file()
    printed = ok(run_script("cocoop/xd_test.sh", "oxford_pets", "1", *tiny_opts(tiny_vit), data=pets_root,
                            output=tmp_path, cwd=elsewhere, SOURCE_DATASET="oxford_pets"))
    assert f'from "{train_dir / "prompt_learner" / "model.pth.tar-1"}" (epoch = 1)' in printed
    assert (tmp_path / f"evaluation/CoCoOp/{COCOOP_CFG}_16shots/oxford_pets/seed1/run.json").is_file()


@pytest.mark.parametrize("data", [None, "/nonexistent/datasets"])
def test_missing_data_root_is_a_clear_error(tmp_path, data):
    result = run_script("coop/main.sh", "oxford_pets", CFG, "end", "16", "16", "False",
                        data=data, output=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    expected = "set DATA to the folder that holds the datasets" if data is None else f"DATA={data} is not a directory"
    assert expected in result.stderr
    assert not list(tmp_path.iterdir())


def test_lpclip_main_passes_the_layout_and_shots_to_train_py(tmp_path):
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    stub.chmod(0o755)
    env = {**os.environ, "DATA": str(tmp_path), "PYTHON": str(stub), "ARGS_FILE": str(tmp_path / "args"),
           "OUTPUT_ROOT": str(tmp_path / "out"), "SEEDS": "2"}
    subprocess.run(["bash", str(REPO / "scripts/lpclip/main.sh"), "oxford_pets", "rn50", "4", "OPTIM.LR", "0.1"],
                   env=env, check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[args.index("--output-dir") + 1] == str(tmp_path / "out/oxford_pets/LinearProbeCLIP/rn50_4shots/seed2")
    assert args[args.index("--seed") + 1] == "2" and args[args.index("--trainer") + 1] == "LinearProbeCLIP"
    assert args[args.index("--config-file") + 1] == "configs/trainers/LinearProbeCLIP/rn50.yaml"
    assert args[args.index("--dataset-config-file") + 1] == "configs/datasets/oxford_pets.yaml"
    assert args[-4:] == ["DATASET.NUM_SHOTS", "4", "OPTIM.LR", "0.1"]


# ------------------------------------------------------------------------------ usage and finding Python
# Every script and the arguments it needs (the part of its usage line before the optional [KEY VALUE ...]).
SCRIPT_ARGS = {
    "coop/main.sh": "DATASET CFG CTP NCTX SHOTS CSC", "coop/eval.sh": "DATASET CFG", "coop/zeroshot.sh": "DATASET CFG",
    "cocoop/base2new_train.sh": "DATASET SEED", "cocoop/base2new_test.sh": "DATASET SEED", "cocoop/xd_train.sh": "SEED",
    "cocoop/xd_test.sh": "DATASET SEED", "genpt/base2new_train.sh": "DATASET SEED",
    "genpt/base2new_test.sh": "DATASET SEED", "genpt/xd_train.sh": "SEED", "genpt/xd_test.sh": "DATASET SEED",
    "lpclip/main.sh": "DATASET CFG SHOTS", "tpt/words.sh": "CFG SETS", "tpt/coop.sh": "CFG SETS MODEL_DIR",
    "tpt/cocoop.sh": "CFG SETS MODEL_DIR", "tpt/merge.sh": "RUN_DIR",
    "ctpt/words.sh": "CFG SETS", "ctpt/coop.sh": "CFG SETS MODEL", "zero/words.sh": "CFG SETS",
    "zero/ensemble.sh": "CFG SETS", "mta/words.sh": "CFG SETS", "tda/templates.sh": "CFG SETS",
}  # fmt: skip


def test_every_protocol_script_is_listed():
    shipped = {str(p.relative_to(REPO / "scripts")) for p in (REPO / "scripts").glob("*/*.sh")} - {"tpt/common_tpt.sh"}
    assert shipped == set(SCRIPT_ARGS)


@pytest.mark.parametrize("script", sorted(SCRIPT_ARGS))
def test_missing_arguments_print_the_usage_line(script, tmp_path):
    """Before anything else (no DATA, no Python needed): the usage line on stderr, exit 2, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATA", "VLPROMPT_PYTHON", "PYTHON")}
    env["VLPROMPT_PYTHON"] = str(tmp_path / "no-python-needed")
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    data = "" if script == "tpt/merge.sh" else "DATA=/path/to/datasets "
    assert result.returncode == 2 and result.stdout == ""
    usage, error = result.stderr.splitlines()
    assert usage.startswith(f"usage: {data}bash scripts/{script} {SCRIPT_ARGS[script]}")
    assert error == f"error: scripts/{script} takes {len(SCRIPT_ARGS[script].split())} argument(s), got 0"
    assert not list(tmp_path.iterdir())

    helped = subprocess.run(["bash", str(REPO / "scripts" / script), "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and helped.stdout == usage + "\n"


def fake_checkout(tmp_path: Path) -> Path:
    """The scripts in a folder of their own, so its .venv can be a stub (nothing real runs)."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "scripts", root / "scripts")
    return root


def stub_python(path: Path, name: str, import_error: str = "") -> Path:
    """An executable that records which stub ran (its name, then its arguments) in $CALLS and, for
    ``-c "import vlprompt"``, fails with ``import_error`` when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fail = f'if [ "$1" = "-c" ]; then echo "{import_error}" >&2; exit 1; fi\n' if import_error else ""
    path.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "$CALLS"\n{fail}')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("chosen", ["VLPROMPT_PYTHON", "PYTHON", "VIRTUAL_ENV", ".venv"])
def test_scripts_find_python_in_the_documented_order(tmp_path, chosen):
    root = fake_checkout(tmp_path)
    calls = tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if k not in ("VLPROMPT_PYTHON", "PYTHON", "VIRTUAL_ENV", "CONDA_PREFIX")}
    env.update(DATA=str(tmp_path), CALLS=str(calls))
    order = ["VLPROMPT_PYTHON", "PYTHON", "VIRTUAL_ENV", ".venv"]
    for source in order[order.index(chosen):]:  # the chosen one and every one it must win over
        if source == "VIRTUAL_ENV":
            env["VIRTUAL_ENV"] = str(stub_python(tmp_path / "venv" / "bin" / "python", source).parent.parent)
        elif source == ".venv":
            stub_python(root / ".venv" / "bin" / "python", source)
        else:
            env[source] = str(stub_python(tmp_path / source.lower(), source))
    result = subprocess.run(["bash", str(root / "scripts/coop/zeroshot.sh"), "oxford_pets", "rn50"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == f"{chosen} -c import vlprompt"  # checked once, before any run
    assert len(lines) == 2 and lines[1].startswith(f"{chosen} train.py --root {tmp_path} ")


def test_a_python_without_vlprompt_is_named_with_the_fix(tmp_path):
    root = fake_checkout(tmp_path)
    calls = tmp_path / "calls"
    python = stub_python(tmp_path / "python3.11", "bare", import_error="ModuleNotFoundError: No module named 'torch'")
    env = {**os.environ, "DATA": str(tmp_path), "CALLS": str(calls), "VLPROMPT_PYTHON": str(python)}
    result = subprocess.run(["bash", str(root / "scripts/coop/main.sh"), "oxford_pets", "rn50", "end", "16", "1",
                             "False"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    first, *fix = result.stderr.splitlines()
    assert first == (f"error: {python} (from VLPROMPT_PYTHON) cannot import vlprompt: "
                     "ModuleNotFoundError: No module named 'torch'")
    assert "VLPROMPT_PYTHON=" in " ".join(fix) and "bash scripts/install.sh" in " ".join(fix)
    assert calls.read_text().splitlines() == ["bare -c import vlprompt"]  # train.py never ran

    env["VLPROMPT_PYTHON"] = str(tmp_path / "missing" / "python")
    result = subprocess.run(["bash", str(root / "scripts/coop/zeroshot.sh"), "oxford_pets", "rn50"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(f"error: no Python at {tmp_path}/missing/python")


def test_merge_script_resolves_the_run_folder_from_where_it_was_started(tmp_path):
    root = fake_checkout(tmp_path)
    calls = tmp_path / "calls"
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    env.update(CALLS=str(calls), VLPROMPT_PYTHON=str(stub_python(tmp_path / "py", "py")))
    result = subprocess.run(["bash", str(root / "scripts/tpt/merge.sh"), "runs/r1"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr  # no DATA needed
    run = tmp_path / "runs" / "r1"
    assert calls.read_text().splitlines()[-1] == f"py -m vlprompt.tta.merge {run} --output-dir {run}/merged"
