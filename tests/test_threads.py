"""The CPU policy (vlprompt/threads.py): the thread count follows the CPUs the process is given or the
user's explicit choice, idle OpenMP threads sleep when vlprompt loads torch, per-image view work runs on
one thread with the same views, and the demo shows progress while a run prints nothing."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image

from vlprompt import threads
from vlprompt.engine.logging import quiet_console
from vlprompt.errors import UserError


@pytest.fixture
def torch_threads(monkeypatch):
    """Run a test from a fresh policy state (as a command starts) and give torch its threads back after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_STATE", threads._State(torch_first=False, startup_threads=before))
    for name in (*threads.EXPLICIT_THREAD_ENVS, threads.SLURM_ENV, threads.POLICY_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: None)
    yield before
    torch.set_num_threads(before)


def affinity(monkeypatch, cpus: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)


# ----------------------------------------------------------------------------------- counting CPUs
def test_available_cpus_is_the_smallest_of_affinity_quota_and_slurm(monkeypatch, tmp_path):
    affinity(monkeypatch, 6)
    assert threads.available_cpus({}, tmp_path) == (6, "affinity mask")
    assert threads.available_cpus({"SLURM_CPUS_PER_TASK": "3"}, tmp_path) == (3, "SLURM_CPUS_PER_TASK")
    assert threads.available_cpus({"SLURM_CPUS_PER_TASK": "16"}, tmp_path) == (6, "affinity mask")
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # cgroup v2: 2.5 CPUs -> 3 threads
    assert threads.available_cpus({}, tmp_path) == (3, "cgroup quota")
    assert threads.available_cpus({"SLURM_CPUS_PER_TASK": "2"}, tmp_path) == (2, "SLURM_CPUS_PER_TASK")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.available_cpus({}, tmp_path) == (6, "affinity mask")
    with pytest.raises(UserError, match='SLURM_CPUS_PER_TASK is "two"'):
        threads.available_cpus({"SLURM_CPUS_PER_TASK": "two"}, tmp_path)


def test_cgroup_v1_quota_is_read(tmp_path):
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 0.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert threads.cgroup_cpu_limit(tmp_path) is None
    assert threads.cgroup_cpu_limit(tmp_path / "missing") is None


def test_explicit_thread_counts_and_their_errors():
    assert threads.explicit_threads({}) is None
    assert threads.explicit_threads({"OMP_NUM_THREADS": "4,2"}) == (4, "OMP_NUM_THREADS")  # per nesting level
    assert threads.explicit_threads({"MKL_NUM_THREADS": "3"}) == (3, "MKL_NUM_THREADS")
    for bad in ("x", "0", "-2"):
        with pytest.raises(UserError, match=f'OMP_NUM_THREADS is "{bad}"; set it to a whole number'):
            threads.explicit_threads({"OMP_NUM_THREADS": bad})
    with pytest.raises(UserError, match='VLPROMPT_CPU_POLICY is "fast"; use "auto"'):
        threads.policy_enabled({"VLPROMPT_CPU_POLICY": "fast"})
    assert threads.policy_enabled({"VLPROMPT_CPU_POLICY": "fast"}, strict=False)
    assert not threads.policy_enabled({"VLPROMPT_CPU_POLICY": "off"})


# ------------------------------------------------------------------------------------------ policy
def test_policy_sizes_torch_to_the_affinity_mask(monkeypatch, torch_threads):
    affinity(monkeypatch, 1)
    policy = threads.apply_cpu_policy()
    assert (policy.threads, policy.source) == (1, "affinity mask") and torch.get_num_threads() == 1
    assert threads.apply_cpu_policy().threads == 1  # a second command in the same process agrees
    affinity(monkeypatch, 3)
    assert threads.apply_cpu_policy().threads == torch.get_num_threads() == 3


def test_policy_follows_slurm_and_the_cgroup_quota(monkeypatch, torch_threads):
    affinity(monkeypatch, 4)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert threads.apply_cpu_policy().source == "SLURM_CPUS_PER_TASK" and torch.get_num_threads() == 3
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: 1.5)
    assert threads.apply_cpu_policy().source == "cgroup quota" and torch.get_num_threads() == 2


def test_policy_keeps_the_users_choice(monkeypatch, torch_threads):
    affinity(monkeypatch, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # torch read it at start; the policy leaves the count alone
    torch.set_num_threads(3)
    assert threads.apply_cpu_policy().source == "OMP_NUM_THREADS" and torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    torch.set_num_threads(torch_threads + 1)  # the user's call after importing vlprompt
    assert threads.apply_cpu_policy().source == "torch.set_num_threads"
    assert torch.get_num_threads() == torch_threads + 1
    monkeypatch.setenv("VLPROMPT_CPU_POLICY", "off")
    torch.set_num_threads(torch_threads)
    assert threads.apply_cpu_policy().source == "VLPROMPT_CPU_POLICY=off" and torch.get_num_threads() == torch_threads
    monkeypatch.setenv("VLPROMPT_CPU_POLICY", "fast")
    with pytest.raises(UserError, match="VLPROMPT_CPU_POLICY"):
        threads.apply_cpu_policy()


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**clean, **env}, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_sets_the_wait_policy_before_torch_and_commands_size_the_pool():
    code = ("import os, vlprompt, torch; from vlprompt.threads import apply_cpu_policy; p = apply_cpu_policy(); "
            "print(os.environ.get('OMP_WAIT_POLICY'), torch.get_num_threads(), p.source)")
    assert run_python(code, SLURM_CPUS_PER_TASK="1") == "PASSIVE 1 SLURM_CPUS_PER_TASK"
    assert run_python(code, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1") == "ACTIVE 1 OMP_NUM_THREADS"
    # torch imported first: OpenMP is loaded already, so the environment and its threads stay the user's.
    first = "import torch; torch.set_num_threads(1); " + code.replace("import os, vlprompt, torch", "import os, vlprompt")
    assert run_python(first, SLURM_CPUS_PER_TASK="2") == "None 1 torch imported before vlprompt"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="affinity masks are Linux's")
def test_a_command_follows_the_affinity_mask_unless_omp_num_threads_says_otherwise():
    # As `taskset -c 0 python train.py ...` starts it: one CPU in the mask, whatever the machine has.
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import vlprompt, torch; "
            "from vlprompt.threads import apply_cpu_policy; p = apply_cpu_policy(); "
            "print(torch.get_num_threads(), p.source, os.environ.get('OMP_WAIT_POLICY'))")
    assert run_python(code) == "1 affinity mask PASSIVE"
    # The user's count wins over the mask (torch itself caps it at the machine's cores).
    assert run_python(code, OMP_NUM_THREADS="2") == f"{min(2, os.cpu_count())} OMP_NUM_THREADS PASSIVE"
    assert run_python(code, OMP_WAIT_POLICY="active") == "1 affinity mask active"  # the user's policy stays
    # Off: torch's own count and no wait policy (GNU OpenMP spins).
    assert run_python(code, VLPROMPT_CPU_POLICY="off").split(" ", 1)[1] == "VLPROMPT_CPU_POLICY=off None"


def test_bad_thread_setting_is_one_line_before_work(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "many"}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--root", str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        'train.py: error: OMP_NUM_THREADS is "many"; set it to a whole number of threads >= 1 '
        "(e.g. OMP_NUM_THREADS=2) or unset it")
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- one-thread views
def test_single_thread_restores_the_pool(torch_threads):
    torch.set_num_threads(2)
    with threads.single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"), threads.single_thread():
        raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_views_are_made_on_one_thread_and_are_the_same(monkeypatch, torch_threads):
    from vlprompt.tta import views as views_module
    from vlprompt.tta.views import ViewMaker, image_rng

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    maker = ViewMaker(32, 6, augmix=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    seen: list[int] = []
    preprocess = ViewMaker.preprocess
    monkeypatch.setattr(ViewMaker, "preprocess",
                        lambda self, pixels: (seen.append(torch.get_num_threads()), preprocess(self, pixels))[1])
    torch.set_num_threads(2)
    policy = maker.views(img, image_rng(1, 7))
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    monkeypatch.setattr(views_module, "single_thread", contextlib.nullcontext)  # the pool, as before the policy
    seen.clear()
    pooled = maker.views(img, image_rng(1, 7))
    assert set(seen) == {2}
    assert torch.equal(policy, pooled)


# ----------------------------------------------------------------------------------- demo progress
def test_demo_progress_reads_the_trainers_lines():
    from vlprompt.demo import RunProgress

    progress = RunProgress("CoOp on ToyWorldSketch", io.StringIO())
    logger = logging.getLogger("vlprompt.engine.trainer")
    logger.addHandler(progress.handler)  # as start() does, on the "vlprompt" logger
    for line, status in [
        ("Loading CLIP (backbone: micro-clip)", "Loading CLIP (backbone: micro-clip)"),
        ("epoch [37/100] batch [3/3] time 0.1 (0.1) data 0.0 (0.0) loss 1.0 (1.0) lr 2.0e-02 eta 0:00:20",
         "epoch 37/100"),
        ("Test: [ 15/240]\tTime  0.4 ( 0.6)\tAcc@1   0.00 ( 53.00)", "image 16/240"),
        ("evaluating: ToyWorldA (240 test images, 24 classes, views: crop + flip)",
         "tuning a prompt for each of 240 images"),
        ("Evaluate on the *test* set", "testing on the test set"),
        ("*" * 15, "testing on the test set"),  # banners change nothing
        ("x" * 80, "x" * 57 + "..."),
    ]:
        logger.info(line)
        assert progress.status == status
    logger.removeHandler(progress.handler)


def test_demo_progress_shows_even_when_the_run_prints_nothing():
    from vlprompt.demo import RunProgress

    console = io.StringIO()
    progress = RunProgress("LinearProbeCLIP on ToyWorldSketch", console, every=0.05)
    progress.start()
    time.sleep(0.3)
    with quiet_console():  # the record goes to the run's log only; the status shows it
        logging.getLogger("vlprompt.engine.trainer").info("epoch [2/5] batch [1/1]")
    time.sleep(0.2)
    progress.write("Warning: a warning still shows\n")
    progress.finish()
    lines = console.getvalue().splitlines()
    assert len(lines) >= 4 and lines[0].startswith("    LinearProbeCLIP on ToyWorldSketch: starting [")
    assert lines[-2].startswith("    LinearProbeCLIP on ToyWorldSketch: epoch 2/5 [")
    assert lines[-1] == "Warning: a warning still shows"
    assert progress.handler not in logging.getLogger("vlprompt").handlers
