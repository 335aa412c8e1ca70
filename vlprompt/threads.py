"""The CPU policy: how many threads torch uses, and how its idle OpenMP threads wait.

Why: torch's defaults assume a machine of its own. It sizes its thread pool by the cores it sees (not the
CPUs a job is given), and GNU OpenMP's idle threads spin. On a machine shared with other jobs each
parallel operation then waits for a descheduled thread while the spinning ones burn the CPU the others
need: the README's demo took 43 minutes instead of 2 on 2 cores at load 8 (``benchmarks/bench_busy.py``
measures it). Three parts, each with its reason:

1. :func:`prepare_openmp`, when ``import vlprompt`` loads torch: ``OMP_WAIT_POLICY=PASSIVE`` unless it is
   set, so idle OpenMP threads sleep. GNU OpenMP reads it once, as torch loads it; so this is the one
   side effect of ``import vlprompt``, and only when torch is not imported yet. ``OMP_WAIT_POLICY=ACTIVE``
   keeps torch's spinning.
2. :func:`apply_cpu_policy`, called by the commands (``train.py``, ``vlprompt ...``, the demo), not by
   importing: torch's thread pools sized to the CPUs the process may use (:func:`available_cpus`).
3. :func:`single_thread` around small per-item work (TPT's views of one image), which only loses by
   waking a pool.

Environment variables:
    VLPROMPT_CPU_POLICY                ``off``: none of the above, torch's defaults as they are (``auto``:
                                       the default)
    OMP_NUM_THREADS, MKL_NUM_THREADS   an explicit thread count: used as it is
    OMP_WAIT_POLICY                    ``ACTIVE``: OpenMP threads spin while idle (torch's behaviour)
    SLURM_CPUS_PER_TASK                a Slurm job's CPUs: caps the count
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from vlprompt.errors import UserValueError

log = logging.getLogger(__name__)

POLICY_ENV = "VLPROMPT_CPU_POLICY"
POLICY_CHOICES = ("auto", "off")
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
EXPLICIT_THREAD_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch reads these itself, in this order
SLURM_ENV = "SLURM_CPUS_PER_TASK"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class _State:
    """What :func:`prepare_openmp` saw when vlprompt was imported, and what the policy set since."""

    torch_first: bool = False  # torch was imported before vlprompt: its settings are the user's
    startup_threads: int | None = None  # torch's thread count when vlprompt was imported
    applied: int | None = None  # the count apply_cpu_policy set


_STATE = _State()


@dataclass(frozen=True)
class CpuPolicy:
    """The thread count torch uses after :func:`apply_cpu_policy`, and why."""

    threads: int
    source: str  # "OMP_NUM_THREADS", "torch.set_num_threads", "affinity mask", "cgroup quota", ...
    wait_policy: str  # OMP_WAIT_POLICY as OpenMP read it ("" when unset: GNU OpenMP spins)

    def describe(self) -> str:
        """One line for the log, e.g. ``torch threads: 2 (affinity mask); OMP_WAIT_POLICY=PASSIVE``."""
        wait = f"OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else "OMP_WAIT_POLICY unset (spinning)"
        return f"torch threads: {self.threads} ({self.source}); {wait}"


def policy_enabled(environ: Mapping[str, str] | None = None, *, strict: bool = True) -> bool:
    """Whether ``VLPROMPT_CPU_POLICY`` leaves the policy on (unset or ``auto``) rather than ``off``; another
    value is a :class:`UserValueError` (or, with ``strict=False``, on)."""
    environ = os.environ if environ is None else environ
    value = environ.get(POLICY_ENV, "").strip().lower() or "auto"
    if value not in POLICY_CHOICES:
        if not strict:
            return True
        raise UserValueError(f'{POLICY_ENV} is "{environ[POLICY_ENV]}"; use "auto" (threads for the CPUs this '
                             f'process is given, idle OpenMP threads sleep) or "off" (torch\'s defaults)')
    return value == "auto"


# --------------------------------------------------------------------------------------- before torch
def prepare_openmp(environ: os._Environ | dict | None = None) -> None:
    """Before torch loads GNU OpenMP: idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``) unless the user set
    a policy; then note torch's starting thread count, so a later ``torch.set_num_threads`` reads as the
    user's choice. When torch is already imported, its environment and threads are left as the user made
    them (and :func:`apply_cpu_policy` keeps them)."""
    environ = os.environ if environ is None else environ
    _STATE.torch_first = "torch" in sys.modules
    # An import must not fail: a wrong VLPROMPT_CPU_POLICY is reported by apply_cpu_policy.
    if not _STATE.torch_first and policy_enabled(environ, strict=False):
        environ.setdefault(WAIT_POLICY_ENV, "PASSIVE")
    import torch

    _STATE.startup_threads = torch.get_num_threads()


# ------------------------------------------------------------------------------------ counting CPUs
def _positive_int(name: str, value: str) -> int:
    """``value`` of environment variable ``name`` as a thread count (``OMP_NUM_THREADS`` may list one per
    nesting level, "4,2": the first is the count)."""
    text = value.split(",")[0].strip()
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise UserValueError(f'{name} is "{value}"; set it to a whole number of threads >= 1 (e.g. {name}=2) '
                             f"or unset it")
    return number


def explicit_threads(environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """The thread count the user set in the environment (``OMP_NUM_THREADS``, else ``MKL_NUM_THREADS``),
    and which variable; None when neither is set."""
    environ = os.environ if environ is None else environ
    for name in EXPLICIT_THREAD_ENVS:
        value = environ.get(name, "").strip()
        if value:
            return _positive_int(name, value), name
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The CPUs a cgroup quota allows this process (quota / period; may be fractional), or None when there
    is no quota or it cannot be read. cgroup v2 ``cpu.max`` (own group, then the root), else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    own = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                own = line[3:].strip().lstrip("/")
    for folder in dict.fromkeys((root / own, root)):
        with contextlib.suppress(OSError, ValueError):
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else float(quota) / float(period)
    for folder in (root / "cpu", root / "cpu,cpuacct"):
        with contextlib.suppress(OSError, ValueError):
            quota = float((folder / "cpu.cfs_quota_us").read_text())
            period = float((folder / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 or period <= 0 else quota / period
    return None


def available_cpus(environ: Mapping[str, str] | None = None, cgroup_root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """How many CPUs this process may use, and what says so: the smallest of its affinity mask (the cores
    of ``taskset``/``numactl``/a batch system), a cgroup CPU quota (containers) and ``SLURM_CPUS_PER_TASK``."""
    environ = os.environ if environ is None else environ
    try:
        counts = [(len(os.sched_getaffinity(0)), "affinity mask")]
    except (AttributeError, OSError):  # not Linux
        counts = [(os.cpu_count() or 1, "cpu count")]
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        counts.append((max(1, math.ceil(quota - 1e-9)), "cgroup quota"))
    slurm = environ.get(SLURM_ENV, "").strip()
    if slurm:
        counts.append((_positive_int(SLURM_ENV, slurm), SLURM_ENV))
    return min(counts, key=lambda count: count[0])


# -------------------------------------------------------------------------------------------- policy
def apply_cpu_policy(environ: Mapping[str, str] | None = None) -> CpuPolicy:
    """Size torch's thread pools to the CPUs this process is given (:func:`available_cpus`), unless the
    user chose: ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (torch already follows them), a
    ``torch.set_num_threads`` call since vlprompt was imported, or torch imported before vlprompt (its
    threads may be set already). For the commands; repeated calls agree."""
    import torch

    environ = os.environ if environ is None else environ
    wait_policy = environ.get(WAIT_POLICY_ENV, "")
    current = torch.get_num_threads()
    chosen = explicit_threads(environ) if policy_enabled(environ) else (current, f"{POLICY_ENV}=off")
    if chosen is not None:  # the user's count (torch follows the variables itself), or no policy at all
        policy = CpuPolicy(current, chosen[1], wait_policy)
    elif _STATE.torch_first:
        policy = CpuPolicy(current, "torch imported before vlprompt", wait_policy)
    elif _STATE.startup_threads is not None and current not in (_STATE.startup_threads, _STATE.applied):
        policy = CpuPolicy(current, "torch.set_num_threads", wait_policy)
    else:
        threads, source = available_cpus(environ)
        if threads != current:
            torch.set_num_threads(threads)
        # Nothing in vlprompt uses inter-op parallelism; the pool just should not outnumber the CPUs. It
        # can be sized once, before first use: a second call (or a pool in use) keeps what it has.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
        _STATE.applied = threads
        policy = CpuPolicy(threads, source, wait_policy)
    log.debug(policy.describe())
    return policy


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the block's torch operations on the calling thread only (restored after). For small per-item
    work, such as one image's views: waking a pool costs more than it saves there, and on a busy machine
    every operation would wait for the slowest descheduled pool thread."""
    import torch

    previous = torch.get_num_threads()
    if previous == 1 or not policy_enabled(strict=False):
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
