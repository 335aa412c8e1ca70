"""Packaging and environment: no colliding top-level modules, the torchvision shim, train.py's flags."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import setuptools

REPO_ROOT = Path(__file__).resolve().parent.parent

# CoOp's train.py flags (anchors.md §1.2): names, defaults and whether they take a value.
COOP_FLAGS = {
    "--root": "", "--output-dir": "", "--resume": "", "--seed": -1, "--source-domains": None,
    "--target-domains": None, "--transforms": None, "--config-file": "", "--dataset-config-file": "",
    "--trainer": "", "--backbone": "", "--head": "", "--eval-only": False, "--model-dir": "",
    "--load-epoch": None, "--no-train": False,
}
# Flags vlprompt adds beside CoOp's; none changes what a CoOp command line means.
VLPROMPT_FLAGS = {"--resume-anyway": False}


def setup_kwargs(monkeypatch) -> dict:
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO_ROOT)
    runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    return captured


def test_trainers_and_datasets_ship_inside_vlprompt_only(monkeypatch):
    kwargs = setup_kwargs(monkeypatch)
    top_level = {name.split(".")[0] for name in kwargs["packages"]}
    assert top_level == {"vlprompt"}  # never a top-level `datasets` (Hugging Face) or `trainers`
    assert {"vlprompt.trainers", "vlprompt.datasets"} <= set(kwargs["packages"])
    assert kwargs["package_dir"] == {"vlprompt.trainers": "trainers", "vlprompt.datasets": "datasets"}


def test_requirements_never_pin_a_torch_build(monkeypatch):
    requirements = setup_kwargs(monkeypatch)["install_requires"]
    torch_reqs = [r for r in requirements if r.startswith(("torch", "torchvision"))]
    assert torch_reqs and all("==" not in r and "<" not in r for r in torch_reqs)


def test_torchvision_imports_after_vlprompt_whatever_the_build():
    code = "import vlprompt, torch, torchvision; import torchvision.transforms as T; torch.ops.torchvision.nms; print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_train_py_has_coops_flags_with_the_same_defaults():
    from vlprompt.cli import build_parser

    parser = build_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}
    assert set(actions) == set(COOP_FLAGS) | set(VLPROMPT_FLAGS)
    for flag, default in {**COOP_FLAGS, **VLPROMPT_FLAGS}.items():
        assert actions[flag].default == default, flag
    args = parser.parse_args(["--trainer", "CoOp", "TRAINER.COOP.N_CTX", "16", "DATASET.NUM_SHOTS", "1"])
    assert args.opts == ["TRAINER.COOP.N_CTX", "16", "DATASET.NUM_SHOTS", "1"]


def test_train_py_runs_from_a_checkout_without_install(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and "--dataset-config-file" in proc.stdout
