"""The demo on a busy machine: its CoOp step, TPT per test image and TPT's view making, each alone and
beside CPU-bound competitors, under torch's own CPU defaults ("old") and vlprompt's CPU policy ("new",
vlprompt/threads.py), side by side in one run.

    python benchmarks/bench_busy.py                                   # 3 workloads x old/new x alone/busy
    python benchmarks/bench_busy.py --workloads coop --epochs 100     # the demo's whole CoOp step
    python benchmarks/bench_busy.py --workloads demo --busy-policies new   # the whole demo (minutes)
    python benchmarks/bench_busy.py --out benchmarks/results/busy_cpu.json

Workloads (the demo's own settings, from vlprompt.demo, on the toy world written once under --workdir):

* ``coop``: the demo's CoOp step (4 shots of ToyWorldSketch, class-specific context), ``--epochs`` epochs;
* ``tpt``: the demo's TPT step on ``--tpt-images`` test images of ToyWorldA (a shard of the set), timed
  from TPT's first image to its last (its "evaluating:" and "TPT: N images" lines);
* ``views``: TPT's views of one test image (64, with AugMix as TPT makes them for non-ImageNet data);
* ``demo``: ``python -m vlprompt.demo`` as a user runs it.

Each measurement is its own process (OpenMP reads its wait policy when torch loads). "old" is
``VLPROMPT_CPU_POLICY=off``: torch's defaults, which is what vlprompt did before the policy. Competitors
are ``--competitors`` busy-loop processes (default: one per CPU). With k of them on c CPUs a fair share
of the machine is c/(c+k), so the fair-share slowdown is (c+k)/c (2x for k = c); ``vs_fair`` is the
measured slowdown over that (1.0: exactly a fair share; well above: the work itself wastes the CPU).
The machine's load average before each measurement is recorded: other users' jobs count as competitors
too, so measure when it is low.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The environment the user started with: each measurement's process gets it plus its policy's variables
# (importing vlprompt below sets OMP_WAIT_POLICY in this process, which must not leak into "old").
USER_ENV = dict(os.environ)

from vlprompt.threads import POLICY_ENV, WAIT_POLICY_ENV, available_cpus  # after USER_ENV

WORKLOADS = ("coop", "tpt", "views", "demo")
POLICIES = ("old", "new")
BUSY_LOOP = "while True: pass"
TPT_STARTS = re.compile(r"^evaluating: ")
TPT_ENDS = re.compile(r"^TPT: ([\d,]+) images in ")


# ------------------------------------------------------------------------------------ measurements
def child_env(policy: str) -> dict[str, str]:
    """The environment of a measurement under ``policy`` ("old": torch's defaults; "new": vlprompt's)."""
    env = {k: v for k, v in USER_ENV.items() if k not in (POLICY_ENV, WAIT_POLICY_ENV)}
    if WAIT_POLICY_ENV in USER_ENV and policy == "new":
        env[WAIT_POLICY_ENV] = USER_ENV[WAIT_POLICY_ENV]
    if policy == "old":
        env[POLICY_ENV] = "off"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [USER_ENV.get("PYTHONPATH")])])
    return env


class _Marks:
    """Stands in for stdout in a measurement: notes the CPU and wall clock when TPT's loop starts and ends."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.start: tuple[float, float] | None = None
        self.end: tuple[float, float] | None = None
        self.images = 0

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if TPT_STARTS.match(line) and self.start is None:
                self.start = (time.perf_counter(), time.process_time())
            elif (match := TPT_ENDS.match(line)) is not None:
                self.end = (time.perf_counter(), time.process_time())
                self.images = int(match[1].replace(",", ""))
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def measure(spec: dict) -> dict:
    """Run one workload in this process (a measurement's own process) and return its times."""
    from vlprompt import demo
    from vlprompt.threads import apply_cpu_policy

    policy = apply_cpu_policy()  # as the commands do; VLPROMPT_CPU_POLICY=off ("old") leaves torch alone
    workdir, data = Path(spec["workdir"]), Path(spec["workdir"]) / "data"
    out: dict = {"threads": policy.threads, "wait_policy": policy.wait_policy}
    wall, cpu = time.perf_counter(), time.process_time()
    if spec["workload"] == "coop":
        ctx = demo.DemoContext(data, workdir / f"run_{os.getpid()}", shots=4)
        folder = ctx.output_dir("coop")
        run = ctx.train("CoOp", demo.FEW_SHOT_DATASET, demo.COOP_CFG, folder, "DATASET.NUM_SHOTS", "4",
                        *demo.COOP_OPTS, "OPTIM.MAX_EPOCH", str(spec["epochs"]), shots=4)
        out["accuracy"] = run.accuracy
    elif spec["workload"] == "tpt":
        ctx = demo.DemoContext(data, workdir / f"run_{os.getpid()}")
        marks = _Marks(sys.stdout)
        with contextlib.redirect_stdout(marks):
            ctx.verbose = True  # the marks read TPT's lines; the demo's quiet mode would hide them
            shard = f"1/{max(1, 240 // spec['tpt_images'])}"
            run = ctx.train("TPT", demo.TPT_DATASET, demo.TPT_CFG, ctx.output_dir("tpt"), *demo.TPT_OPTS,
                            "TRAINER.TPT.SHARD", shard)
        out["accuracy"] = run.accuracy
        if marks.start and marks.end and marks.images:
            out.update(images=marks.images, wall_per_image_s=(marks.end[0] - marks.start[0]) / marks.images,
                       cpu_per_image_s=(marks.end[1] - marks.start[1]) / marks.images)
    elif spec["workload"] == "views":
        out.update(views_per_image(data, spec["view_images"]))
    elif spec["workload"] == "demo":
        runs = demo.main(["--workdir", str(workdir / f"demo_{os.getpid()}")])
        out["accuracies"] = {f"{r.method} {r.dataset} {r.classes}": r.accuracy for r in runs}  # same in every row
    out.update(wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu)
    return out


def views_per_image(data: Path, images: int) -> dict:
    """Wall and CPU seconds per image of TPT's views (64, AugMix) of ToyWorldA test images."""
    from vlprompt.engine.data import read_image
    from vlprompt.tta.views import ViewMaker, image_rng

    files = sorted((data / "toyworld" / "adversarial").rglob("*.png"))[: images + 1]
    pictures = [read_image(str(path)) for path in files]
    maker = ViewMaker(224, 64, augmix=True, mean=(0.48145466, 0.4578275, 0.40821073),
                      std=(0.26862954, 0.26130258, 0.27577711))
    maker.views(pictures[0], image_rng(1, 0))  # warm-up, not timed
    wall, cpu = time.perf_counter(), time.process_time()
    for index, picture in enumerate(pictures[1:], 1):
        maker.views(picture, image_rng(1, index))
    n = len(pictures) - 1
    return {"images": n, "wall_per_image_s": (time.perf_counter() - wall) / n,
            "cpu_per_image_s": (time.process_time() - cpu) / n}


@contextlib.contextmanager
def competitors(count: int) -> Iterator[None]:
    """``count`` CPU-bound busy-loop processes for the duration of the block (ended by their own ids)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(1.0 if procs else 0.0)  # let them reach the scheduler
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def run_measurement(spec: dict, policy: str, busy: int, timeout: float) -> dict:
    """One measurement in its own process, beside ``busy`` competitors."""
    load = os.getloadavg()[0]
    with competitors(busy):
        try:
            done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], env=child_env(policy),
                                  capture_output=True, check=False, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"policy": policy, "competitors": busy, "load_before": load, "timed_out_after_s": timeout}
    if done.returncode != 0:
        raise RuntimeError(f"measurement {spec} ({policy}, {busy} competitors) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"policy": policy, "competitors": busy, "load_before": load, **result}


# ------------------------------------------------------------------------------------------ report
def uptime() -> str:
    """``uptime``'s line (the load averages other users' jobs add; they compete as the busy loops do)."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{load:.2f}" for load in os.getloadavg())


def key_time(row: dict) -> tuple[str, float | None]:
    """What a workload's slowdown is measured on: per image where there are images, else the whole run."""
    if "wall_per_image_s" in row:
        return "wall_per_image_s", row["wall_per_image_s"]
    return "wall_s", row.get("wall_s")


def add_ratios(rows: list[dict], cpus: int) -> None:
    """Each busy row's slowdown against the same workload and policy alone, and against the fair share."""
    alone = {(r["workload"], r["policy"]): r for r in rows if r["competitors"] == 0}
    for row in rows:
        base = alone.get((row["workload"], row["policy"]))
        _, seconds = key_time(row)
        if row["competitors"] == 0 or base is None or seconds is None:
            continue
        _, base_seconds = key_time(base)
        fair = (cpus + row["competitors"]) / cpus
        row["slowdown"] = seconds / base_seconds
        row["fair_share_slowdown"] = fair
        row["vs_fair"] = row["slowdown"] / fair
        cpu_key = "cpu_per_image_s" if "cpu_per_image_s" in row else "cpu_s"
        row["cpu_ratio"] = row[cpu_key] / base[cpu_key]


def print_table(rows: list[dict]) -> None:
    """The results as a Markdown table."""
    print("\n| workload | policy | competitors | load before | wall s | CPU s | slowdown | fair share | vs fair | "
          "CPU ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "timed_out_after_s" in r:
            print(f"| {r['workload']} | {r['policy']} | {r['competitors']} | {r['load_before']:.1f} | "
                  f"> {r['timed_out_after_s']:.0f} (timed out) | | | | | |")
            continue
        per = "wall_per_image_s" in r
        wall = r["wall_per_image_s"] if per else r["wall_s"]
        cpu = r["cpu_per_image_s"] if per else r["cpu_s"]
        unit = "/img" if per else ""

        def cell(key: str, row: dict = r) -> str:
            return f"{row[key]:.2f}x" if key in row else ""

        print(f"| {r['workload']} | {r['policy']} ({r['threads']} thr) | {r['competitors']} | {r['load_before']:.1f} | "
              f"{wall:.3g}{unit} | {cpu:.3g}{unit} | {cell('slowdown')} | {cell('fair_share_slowdown')} | "
              f"{cell('vs_fair')} | {cell('cpu_ratio')} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["coop", "tpt", "views"], choices=WORKLOADS)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--busy-policies", nargs="+", choices=POLICIES,
                        help="policies measured beside the competitors (default: --policies)")
    parser.add_argument("--competitors", type=int, default=0, help="busy-loop processes (0: one per CPU)")
    parser.add_argument("--epochs", type=int, default=25, help="CoOp epochs (the demo runs 100)")
    parser.add_argument("--tpt-images", type=int, default=24, help="test images of the TPT measurement")
    parser.add_argument("--view-images", type=int, default=10, help="images of the views measurement")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a measurement is given up")
    parser.add_argument("--workdir", default="/tmp/vlprompt_bench_busy", help="toy world and run outputs")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--table", default="", help="only print the table of an earlier --out JSON")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return []
    if args.table:
        rows = json.loads(Path(args.table).read_text())["results"]
        print_table(rows)
        return rows

    from vlprompt.toyworld import write_toyworld

    cpus, cpu_source = available_cpus()
    busy = args.competitors or cpus
    workdir = Path(args.workdir).resolve()
    write_toyworld(workdir / "data")  # once, not timed (the demo's own data step is in "demo")
    rows: list[dict] = []
    started = time.time()
    uptime_before = uptime()
    for workload in args.workloads:
        spec = {"workload": workload, "workdir": str(workdir), "epochs": args.epochs,
                "tpt_images": args.tpt_images, "view_images": args.view_images}
        for competitors_now in (0, busy):
            policies = args.policies if competitors_now == 0 else (args.busy_policies or args.policies)
            for policy in policies:  # old and new take turns, so a change in background load hits both
                row = {"workload": workload, **run_measurement(spec, policy, competitors_now, args.timeout)}
                rows.append(row)
                print(f"{workload:6s} {policy:4s} competitors {competitors_now}: "
                      + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    add_ratios(rows, cpus)
    print_table(rows)
    if args.out:
        import torch

        payload = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                   "parallel_backend": next((line.strip() for line in torch.__config__.parallel_info().splitlines()
                                             if "parallel backend" in line), ""),
                   "cpus": cpus, "cpu_source": cpu_source, "competitors": busy,
                   "settings": {"epochs": args.epochs, "tpt_images": args.tpt_images, "view_images": args.view_images},
                   "uptime_before": uptime_before, "uptime_after": uptime(),
                   "seconds": time.time() - started, "results": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        from vlprompt.engine.checkpoint import atomic_write_text

        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
