"""VLPROMPT_ENGINE=dassl: trainers and datasets register into Dassl's registries and train.py builds
through Dassl, tested against a stand-in of Dassl's package surface (tests/dassl_standin)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STANDIN = Path(__file__).resolve().parent / "dassl_standin"

SCRIPT = r"""
import json, sys
import vlprompt
from vlprompt import compat
from vlprompt.cli import main
import dassl.engine, dassl.data.datasets
from vlprompt.engine import registry as builtin

root, tiny, out = sys.argv[1:4]
common = ["--root", root, "--dataset-config-file", "configs/datasets/oxford_pets.yaml",
          "--config-file", "configs/trainers/CoOp/vit_b16.yaml", "--seed", "1"]
opts = ["MODEL.BACKBONE.NAME", tiny, "DATALOADER.NUM_WORKERS", "0", "TRAINER.COOP.N_CTX", "4",
        "TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2"]
zs = main(["--trainer", "ZeroshotCLIP", "--output-dir", out + "/zs", "--eval-only", *common, *opts])
coop = main(["--trainer", "CoOp", "--output-dir", out + "/coop", *common, *opts])
again = main(["--trainer", "CoOp", "--output-dir", out + "/eval", "--eval-only", "--model-dir", out + "/coop",
              "--load-epoch", "1", *common, *opts])
print("@@JSON@@" + json.dumps({
    "engine": compat.ENGINE,
    "dassl_trainers": dassl.engine.TRAINER_REGISTRY.registered_names(),
    "dassl_datasets": dassl.data.datasets.DATASET_REGISTRY.registered_names(),
    "builtin_trainers": builtin.TRAINER_REGISTRY.registered_names(),
    "built": dassl.engine.BUILT_WITH_STANDIN,
    "is_dassl_subclass": isinstance(coop, dassl.engine.TrainerX),
    "zs": zs.test_results["accuracy"], "coop": coop.test_results["accuracy"], "again": again.test_results["accuracy"],
}))
"""


def run_plugin_mode(args: list[str], engine: str = "dassl", pythonpath: str = str(STANDIN)):
    env = {**os.environ, "VLPROMPT_ENGINE": engine, "PYTHONPATH": pythonpath}
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)


def test_trainers_and_datasets_register_into_dassl_and_train_py_builds_through_it(pets_root, tiny_vit, tmp_path):
    proc = run_plugin_mode([pets_root, tiny_vit, str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("@@JSON@@", 1)[1])
    assert result["engine"] == "dassl"
    assert {"CoOp", "CoCoOp", "ZeroshotCLIP", "ZeroshotCLIP2"} <= set(result["dassl_trainers"])
    assert "OxfordPets" in result["dassl_datasets"]
    assert result["builtin_trainers"] == []  # nothing went into vlprompt's own registry
    assert result["built"] == ["ZeroshotCLIP", "CoOp", "CoOp"]
    assert result["is_dassl_subclass"]
    assert result["coop"] == result["again"]  # our safe loader read our checkpoint back in Dassl mode
    assert (tmp_path / "coop" / "prompt_learner" / "model.pth.tar-1").is_file()


def test_dassl_selected_but_missing_is_a_clear_error(tmp_path):
    proc = run_plugin_mode([str(tmp_path), "x", str(tmp_path)], pythonpath="")
    assert proc.returncode != 0
    assert "VLPROMPT_ENGINE=dassl but Dassl cannot be imported" in proc.stderr
    assert "unset VLPROMPT_ENGINE" in proc.stderr


def test_unknown_engine_value_is_rejected(monkeypatch):
    from vlprompt.compat import selected_engine

    monkeypatch.setenv("VLPROMPT_ENGINE", "detectron")
    with pytest.raises(ValueError, match='"detectron" is not an engine'):
        selected_engine()


EVERY_TRAINER = r"""
import json, sys
from vlprompt.cli import main
import dassl.engine

root, tiny, out = sys.argv[1:4]
data = ["--root", root, "--dataset-config-file", "configs/datasets/oxford_pets.yaml", "--seed", "1"]
common = ["MODEL.BACKBONE.NAME", tiny, "DATALOADER.NUM_WORKERS", "0"]
runs = {
    "CoCoOp": ("CoCoOp/vit_b16_c4_ep10_batch1.yaml", [], ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1",
                                                         "TRAINER.COCOOP.PREC", "fp32"]),
    "GenPT": ("GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml", [], ["OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "2",
                                                              "TRAINER.GENPT.PREC", "fp32"]),
    "TPT": ("TPT/vit_b16.yaml", [], ["TRAINER.TPT.N_VIEWS", "4", "TRAINER.TPT.SELECTION_P", "0.5"]),
    "LinearProbeCLIP": ("LinearProbeCLIP/vit_b16.yaml", [], ["DATASET.NUM_SHOTS", "2", "TRAINER.LINEAR_PROBE.NUM_STEP", "1"]),
}
accuracy = {}
for name, (config, flags, opts) in runs.items():
    trainer = main(["--trainer", name, "--config-file", "configs/trainers/" + config, "--output-dir", out + "/" + name,
                    *data, *flags, *common, *opts])
    accuracy[name] = trainer.test_results["accuracy"]
print("@@JSON@@" + json.dumps({"built": dassl.engine.BUILT_WITH_STANDIN, "accuracy": accuracy}))
"""


def test_every_trainer_runs_in_dassl_mode(pets_root, tiny_vit, tmp_path):
    """CoCoOp, GenPT, TPT and the linear probe (ZS and CoOp above) build their data through Dassl's data
    manager and loaders, which find the datasets registered into Dassl's registry."""
    env = {**os.environ, "VLPROMPT_ENGINE": "dassl", "PYTHONPATH": str(STANDIN)}
    proc = subprocess.run([sys.executable, "-c", EVERY_TRAINER, pets_root, tiny_vit, str(tmp_path)], env=env,
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("@@JSON@@", 1)[1])
    assert result["built"] == ["CoCoOp", "GenPT", "TPT", "LinearProbeCLIP"]
    assert all(0.0 <= acc <= 100.0 for acc in result["accuracy"].values())
