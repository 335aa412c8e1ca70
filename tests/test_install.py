"""Packaging and environment: no colliding top-level modules, the torchvision shim, train.py's flags, and a
non-editable install (a built wheel in a fresh virtual environment) that works from any directory."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
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
    assert kwargs["package_dir"] == {"vlprompt.configs": "configs"}  # trainers/datasets are real subpackages


def test_one_identity_under_either_name():
    """A CoOp user's ``import trainers.coop`` beside ``vlprompt.trainers.coop`` registers nothing twice."""
    code = (
        "import vlprompt.trainers.coop as real\n"
        "import trainers.coop as repo\n"
        "import datasets.oxford_pets, vlprompt.datasets.oxford_pets\n"
        "from trainers import coop\n"
        "from vlprompt.engine.registry import TRAINER_REGISTRY\n"
        "assert repo is real and coop is real and repo.CoOp is TRAINER_REGISTRY.get('CoOp')\n"
        "assert datasets.oxford_pets is vlprompt.datasets.oxford_pets\n"
        "assert real.__file__.endswith('vlprompt/trainers/coop.py')\n"
        "print('ok')\n"
    )
    for first in ("import trainers.coop\n", ""):  # the top-level name imported first, or second
        script = "import sys; sys.path.insert(0, sys.argv[1])\n" + first + code
        result = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True,
                                text=True, cwd=REPO_ROOT / "tests", timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_configs_and_commands_are_part_of_the_package(monkeypatch):
    kwargs = setup_kwargs(monkeypatch)
    assert "vlprompt.configs" in kwargs["packages"] and kwargs["package_data"]["vlprompt.configs"] == ["**/*.yaml"]
    assert sorted(kwargs["entry_points"]["console_scripts"]) == [
        "vlprompt-train=vlprompt.commands:train_main", "vlprompt=vlprompt.commands:main"]


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


# ------------------------------------------------------------------------------ a real, non-editable install
def run(command: list[str], cwd: Path, env: dict, timeout: int = 120) -> str:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """vlprompt built into a wheel from a copy of the tracked files and installed (``--no-deps``, nothing
    downloaded) into a fresh virtual environment; its dependencies come from this test's environment through
    a .pth file, which does not make the checkout importable. Returns the environment's folder."""
    import pip
    from packaging.version import Version

    if Version(pip.__version__) < Version("22.3"):
        pytest.skip(f"pip {pip.__version__} has no --python (22.3+ installs into another environment)")
    base = tmp_path_factory.mktemp("install")
    source = base / "source"  # a copy: building writes build/ and *.egg-info next to setup.py
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "output", "demo", ".*_cache"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(base / "dist"), str(source)], cwd=base, env=env, timeout=300)
    venv = base / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, env=env)
    wheel = next((base / "dist").glob("vlprompt-*.whl"))
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "--no-index",
         "-q", str(wheel)], cwd=base, env=env, timeout=300)
    site = run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=base, env=env).strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "vlprompt_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return venv


def test_installed_vlprompt_works_from_any_directory(installed, pets_root, tiny_vit, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["VLPROMPT_OFFLINE"] = "1"
    python, vlprompt = str(installed / "bin" / "python"), str(installed / "bin" / "vlprompt")
    assert not (tmp_path / "configs").exists()

    # The package, its plugins and its configs all come from the environment, not from the checkout.
    code = ("import json, vlprompt, vlprompt.trainers.coop, vlprompt.datasets.oxford_pets\n"
            "from vlprompt.demo import config_path\n"
            "from vlprompt.resources import configs_dir\n"
            "print(json.dumps([vlprompt.__file__, vlprompt.trainers.coop.__file__, str(configs_dir()),\n"
            "                  config_path('trainers/TPT/vit_b16.yaml')]))")
    files = json.loads(run([python, "-c", code], cwd=tmp_path, env=env))
    package = Path(files[0]).parent
    assert package.is_relative_to(installed) and not package.is_relative_to(REPO_ROOT)
    assert files[1:] == [str(package / "trainers" / "coop.py"), str(package / "configs"),
                         str(package / "configs" / "trainers" / "TPT" / "vit_b16.yaml")]
    shipped = sorted(p.relative_to(package / "configs") for p in (package / "configs").rglob("*.yaml"))
    assert shipped == sorted(p.relative_to(REPO_ROOT / "configs") for p in (REPO_ROOT / "configs").rglob("*.yaml"))

    # The command, each subcommand's --help and `list`, from a directory that is not the checkout.
    top = run([vlprompt, "--help"], cwd=tmp_path, env=env)
    for name in ("train", "tpt", "check-data", "tables", "plot", "interpret", "demo", "list"):
        assert f"\n  {name} " in top
    helps = ("import contextlib, io, json\nfrom vlprompt.commands import COMMANDS, main\nout = {}\n"
             "for c in COMMANDS:\n"
             "    text = io.StringIO()\n"
             "    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):\n"
             "        main([c.name, '--help'])\n"
             "    out[c.name] = text.getvalue()\n"
             "print(json.dumps(out))")
    for name, text in json.loads(run([python, "-c", helps], cwd=tmp_path, env=env)).items():
        assert text.startswith(f"usage: vlprompt {name} "), (name, text[:200])
    listed = run([vlprompt, "list"], cwd=tmp_path, env=env)
    assert "  CoOp " in listed and "configs/datasets/oxford_pets.yaml" in listed and "micro-clip" in listed
    assert f"shipped in {package / 'configs'}" in listed

    # A tiny CoOp run with configs/... paths that exist only inside the installed package.
    printed = run([vlprompt, "train", "--root", pets_root, "--trainer", "CoOp", "--seed", "1",
                   "--config-file", "configs/trainers/CoOp/vit_b16.yaml",
                   "--dataset-config-file", "configs/datasets/oxford_pets.yaml", "--output-dir", "out",
                   "MODEL.BACKBONE.NAME", tiny_vit, "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1",
                   "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "20"], cwd=tmp_path, env=env)
    shipped_cfg = package / "configs" / "trainers" / "CoOp" / "vit_b16.yaml"
    assert (f"configs/trainers/CoOp/vit_b16.yaml is not in the working directory; using vlprompt's shipped copy "
            f"{shipped_cfg}") in printed
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["trainer"] == "CoOp" and record["dataset"] == "OxfordPets" and "accuracy" in record["metrics"]
