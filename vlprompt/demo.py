"""The README's demo: every method learning visibly, on a laptop CPU, in a few minutes.

Everything runs through ``train.py`` (in process) on the toy world (:mod:`vlprompt.toyworld`) with the
bundled micro CLIP (``MODEL.BACKBONE.NAME micro-clip``), so nothing is downloaded:

1. zero-shot CLIP ("a photo of a {}.") on the photo domain and its three shifts (sketch, rendition,
   adversarial: the ImageNet-Sketch/-R/-A analogues);
2. CoOp with a few shots on the sketch domain, where the hand-crafted prompt fits the line drawings
   poorly (class-specific contexts, as CoOp's CSC), beside the linear probe on the same shots;
3. CoCoOp and 4. GenPT base-to-new on ToyWorldNovel: trained on the base classes, tested on base and
   on new classes made of attribute combinations the micro CLIP never saw;
5. TPT on the adversarial domain (small crops of clutter), tuning the prompt for each test image.

The results tables (``vlprompt.results``, as ``python -m vlprompt.tables`` prints them) close the run;
every run's ``log.txt`` and ``run.json`` stay under ``--workdir``. The demo is a list of steps
(:data:`STEPS`): a later method adds one function and one entry.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from vlprompt.resources import shipped_config

BACKBONE = "micro-clip"
SOURCE = "ToyWorld"
SHIFTED = ("ToyWorldSketch", "ToyWorldR", "ToyWorldA")
FEW_SHOT_DATASET = "ToyWorldSketch"
BASE_TO_NEW_DATASET = "ToyWorldNovel"
TPT_DATASET = "ToyWorldA"
# The yamls are the reference ones (224-pixel input fits the micro CLIP); the options below are what
# a micro model on 2 CPU cores needs: fp32, no loader workers, and for CoOp no random crops (a 56-pixel
# toy image cropped to 8% of its area loses its object) with a higher learning rate for fewer steps.
FAST = ["DATALOADER.NUM_WORKERS", "0"]
ZERO_SHOT_CFG = "trainers/CoOp/vit_b16.yaml"
COOP_CFG = "trainers/CoOp/vit_b16_ep100.yaml"
COOP_OPTS = ["TRAINER.COOP.PREC", "fp32", "TRAINER.COOP.CSC", "True", "OPTIM.LR", "0.02",
             "INPUT.TRANSFORMS", "['normalize']"]
LINEAR_PROBE_CFG = "trainers/LinearProbeCLIP/vit_b16.yaml"
COCOOP_CFG = "trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
COCOOP_OPTS = ["TRAINER.COCOOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "5"]
GENPT_CFG = "trainers/GenPT/vit_b16_c4_ep10_batch4_ctxv1.yaml"
GENPT_OPTS = ["TRAINER.GENPT.PREC", "fp32", "OPTIM.MAX_EPOCH", "5"]
TPT_CFG = "trainers/TPT/vit_b16.yaml"
# PRINT_FREQ 8: a progress line per batch of 8 images (the demo shows it; printing changes no result).
TPT_OPTS = ["TRAINER.TPT.PREC", "fp32", "TRAINER.TPT.AUG", "crop", "TRAINER.TPT.BATCH_IMAGES", "8",
            "TRAINER.TPT.PRINT_FREQ", "8"]


# What a run is doing, from the lines the trainers print (the first match wins; else the last line, cut).
PROGRESS_EVERY = 5.0  # seconds between progress lines when the output is not a terminal
PROGRESS_LINES: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"epoch \[(\d+)/(\d+)\]"), lambda m: f"epoch {m[1]}/{m[2]}"),
    (re.compile(r"Test: \[\s*(\d+)/(\d+)\]"), lambda m: f"image {int(m[1]) + 1}/{m[2]}"),  # TPT, 0-based
    (re.compile(r"evaluating: \S+ \(([\d,]+) "), lambda m: f"tuning a prompt for each of {m[1]} images"),
    (re.compile(r"Coarse search"), lambda m: "linear probe: refining the regularisation C"),
    (re.compile(r"Evaluate on the \*(\w+)\* set"), lambda m: f"testing on the {m[1]} set"),
)


class RunProgress(io.TextIOBase):
    """Shows what a quiet run is doing. While a run's lines go to its ``log.txt`` only (``quiet_console``),
    reads the ``vlprompt`` log records (:attr:`handler`) and shows the latest with the time so far, at
    least every :data:`PROGRESS_EVERY` seconds (updated in place each second on a terminal), so no step
    is silent. It also stands in for stdout: what still reaches the console (warnings) passes through,
    on a line of its own."""

    def __init__(self, label: str, console: TextIO, every: float = PROGRESS_EVERY, status: str = "starting") -> None:
        super().__init__()
        self.label = label
        self.console = console
        self.status = status
        self.started = time.time()
        try:
            self.live = console.isatty()
        except (AttributeError, ValueError):
            self.live = False
        self.every = 1.0 if self.live else every
        self.handler = _ProgressHandler(self)
        self._drawn = False  # a live status line is on the screen (a passing write clears it first)
        self._lock = threading.Lock()  # the ticking thread and the run both write to the console
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="demo-progress", daemon=True)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:  # no progress bars drawn through it
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._clear()
            self.console.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def read_line(self, line: str) -> None:
        """Update the status from one line the run logged."""
        line = line.strip()
        if not line or set(line) <= set("*=-"):
            return
        for pattern, describe in PROGRESS_LINES:
            match = pattern.search(line)
            if match:
                self.status = describe(match)
                return
        self.status = line if len(line) <= 60 else line[:57] + "..."

    def _clear(self) -> None:
        if self._drawn:
            self.console.write("\r\x1b[K")
            self._drawn = False

    def show(self) -> None:
        """Print the status line now."""
        text = f"    {self.label}: {self.status} [{time.time() - self.started:.0f} s]"
        with self._lock:
            self.console.write(f"\r{text}\x1b[K" if self.live else text + "\n")
            self._drawn = self.live
            self.console.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            self.show()

    def start(self) -> None:
        """Start showing the status (a background thread, so a step that logs nothing still shows) and
        reading the ``vlprompt`` records."""
        logging.getLogger("vlprompt").addHandler(self.handler)
        self._thread.start()

    def finish(self) -> None:
        """Stop showing it (on a terminal, clear the line: the run's result line takes its place)."""
        logging.getLogger("vlprompt").removeHandler(self.handler)
        self._stop.set()
        self._thread.join()
        with self._lock:
            self._clear()
            self.console.flush()


class _ProgressHandler(logging.Handler):
    """Hands every ``vlprompt`` record's lines to a :class:`RunProgress` (whatever the console shows)."""

    def __init__(self, progress: RunProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        for line in record.getMessage().splitlines():
            self.progress.read_line(line)


@contextlib.contextmanager
def progress_shown(label: str, status: str = "starting") -> Iterator[RunProgress]:
    """Show ``label``'s status on the console while the block runs (see :class:`RunProgress`)."""
    progress = RunProgress(label, sys.stdout, status=status)
    progress.start()
    try:
        yield progress
    finally:
        progress.finish()


def config_path(relative: str) -> str:
    """A shipped config file, ``configs/<relative>`` (found through the package: the demo runs anywhere)."""
    return str(shipped_config(relative))


def dataset_config(name: str) -> str:
    """``configs/datasets/<stem>.yaml`` for a toy-world ``DATASET.NAME`` (ToyWorldR -> toyworld_r.yaml)."""
    stem = "toyworld" if name == "ToyWorld" else "toyworld_" + name.removeprefix("ToyWorld").lower()
    return config_path(f"datasets/{stem}.yaml")


@dataclass
class DemoRun:
    """One ``train.py`` run of the demo and its test accuracy."""

    method: str
    dataset: str
    classes: str  # "all", "base" or "new"
    shots: int | None
    accuracy: float
    output_dir: Path


@dataclass
class DemoContext:
    """What every step needs: where the data and outputs go, the backbone, the seed, and the runs so far."""

    root: Path
    workdir: Path
    backbone: str = BACKBONE
    seed: int = 1
    shots: int = 4
    verbose: bool = False
    runs: list[DemoRun] = field(default_factory=list)

    def output_dir(self, *parts: str) -> Path:
        """A fresh output folder under ``workdir/output`` (a previous demo's run there is removed, so the
        run trains again instead of resuming a finished one)."""
        path = self.workdir.joinpath("output", *parts)
        if path.exists():
            shutil.rmtree(path)
        return path

    def train(self, method: str, dataset: str, config: str, output_dir: Path, *extra: str,
              classes: str = "all", shots: int | None = None, flags: tuple[str, ...] = ()) -> DemoRun:
        """Run ``train.py`` with the demo's data, backbone and seed; records and returns the run."""
        from vlprompt.cli import main as train_main
        from vlprompt.engine.logging import quiet_console

        args = [
            "--root", str(self.root), "--seed", str(self.seed), "--trainer", method,
            "--dataset-config-file", dataset_config(dataset), "--config-file", config_path(config),
            "--output-dir", str(output_dir), *flags,
            "MODEL.BACKBONE.NAME", self.backbone, "DATASET.SUBSAMPLE_CLASSES", classes, *FAST, *extra,
        ]
        started = time.time()
        with contextlib.ExitStack() as quiet:  # the full output is in output_dir/log.txt either way
            if not self.verbose:
                progress = quiet.enter_context(progress_shown(f"{method} on {dataset}"))
                quiet.enter_context(quiet_console())  # warnings still show (through progress, on their own line)
                quiet.enter_context(contextlib.redirect_stdout(progress))
                quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))  # progress bars
            trainer = train_main(args)
        run = DemoRun(method, dataset, classes, shots, float(trainer.test_results["accuracy"]), output_dir)
        self.runs.append(run)
        shot_text = f", {shots} shot{'' if shots == 1 else 's'}" if shots else ""
        print(f"  {method} on {dataset} ({classes} classes{shot_text}): accuracy {run.accuracy:.1f}% "
              f"[{time.time() - started:.0f} s, {output_dir / 'log.txt'}]")
        return run


def step_zero_shot(ctx: DemoContext) -> None:
    """Zero-shot CLIP ("a photo of a {}.") on the photo domain and its shifts."""
    for dataset in (SOURCE, *SHIFTED):
        ctx.train("ZeroshotCLIP", dataset, ZERO_SHOT_CFG, ctx.output_dir("zeroshot", dataset), flags=("--eval-only",))


def step_coop(ctx: DemoContext) -> None:
    """CoOp with ``ctx.shots`` shots per class where the hand-crafted prompt is poor, and the linear
    probe on the same shots (CoOp's few-shot baseline)."""
    out = ctx.output_dir("few_shot", FEW_SHOT_DATASET, "LinearProbeCLIP", f"{ctx.shots}shots", f"seed{ctx.seed}")
    ctx.train("LinearProbeCLIP", FEW_SHOT_DATASET, LINEAR_PROBE_CFG, out, "DATASET.NUM_SHOTS", str(ctx.shots),
              shots=ctx.shots)
    out = ctx.output_dir("few_shot", FEW_SHOT_DATASET, "CoOp", f"vit_b16_ep100_{ctx.shots}shots_csc", f"seed{ctx.seed}")
    ctx.train("CoOp", FEW_SHOT_DATASET, COOP_CFG, out, "DATASET.NUM_SHOTS", str(ctx.shots), *COOP_OPTS,
              shots=ctx.shots)


def base_to_new(ctx: DemoContext, method: str, config: str, opts: list[str]) -> None:
    """Train ``method`` on the base classes of ToyWorldNovel, then test it on the new ones (the
    base2new_train / base2new_test scripts' layout)."""
    tail = (BASE_TO_NEW_DATASET, f"shots_{ctx.shots}", method, Path(config).stem, f"seed{ctx.seed}")
    train_dir = ctx.output_dir("base2new", "train_base", *tail)
    shots = ("DATASET.NUM_SHOTS", str(ctx.shots))
    ctx.train(method, BASE_TO_NEW_DATASET, config, train_dir, *shots, *opts, classes="base", shots=ctx.shots)
    epochs = opts[opts.index("OPTIM.MAX_EPOCH") + 1]
    ctx.train(method, BASE_TO_NEW_DATASET, config, ctx.output_dir("base2new", "test_new", *tail), *shots, *opts,
              classes="new", shots=ctx.shots,
              flags=("--eval-only", "--model-dir", str(train_dir), "--load-epoch", epochs))


def step_cocoop(ctx: DemoContext) -> None:
    """Zero-shot CLIP and CoCoOp on ToyWorldNovel's base and new classes (CoCoOp's base2new protocol)."""
    for classes in ("base", "new"):
        out = ctx.output_dir("base2new", f"test_{classes}", BASE_TO_NEW_DATASET, "ZeroshotCLIP")
        ctx.train("ZeroshotCLIP", BASE_TO_NEW_DATASET, ZERO_SHOT_CFG, out, flags=("--eval-only",), classes=classes)
    base_to_new(ctx, "CoCoOp", COCOOP_CFG, COCOOP_OPTS)


def step_genpt(ctx: DemoContext) -> None:
    """GenPT, same protocol as CoCoOp."""
    base_to_new(ctx, "GenPT", GENPT_CFG, GENPT_OPTS)


def step_tpt(ctx: DemoContext) -> None:
    """TPT from "a photo of a" on the adversarial domain: one prompt update per test image."""
    out = ctx.output_dir("tpt", TPT_DATASET, "TPT", f"seed{ctx.seed}")
    ctx.train("TPT", TPT_DATASET, TPT_CFG, out, *TPT_OPTS)


# (name, function): run in this order; a step reads nothing but the context and earlier runs.
STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("zero-shot CLIP", step_zero_shot),
    ("linear probe and CoOp, few shots", step_coop),
    ("CoCoOp, base-to-new", step_cocoop),
    ("GenPT, base-to-new", step_genpt),
    ("TPT, shifted domain", step_tpt),
]


def results_tables(output: Path) -> str:
    """The demo's runs as the tables papers print, in Markdown (``python -m vlprompt.tables OUTPUT
    --source ToyWorld`` shows the same, with every zero-shot dataset in the few-shot table)."""
    from vlprompt.results import base2new_table, collect_runs, few_shot_results, few_shot_table, tpt_tables
    from vlprompt.results.render import render_all

    collection = collect_runs([str(output)])
    for problem in collection.problems:
        print(f"  could not read {problem}")
    runs = collection.runs
    tables = [few_shot_table(few_shot_results(runs, [FEW_SHOT_DATASET])), base2new_table(runs),
              *tpt_tables(runs, source=SOURCE)]
    return render_all(tables, "md")


def load_average() -> str:
    """``; load average L`` (the last minute's; other jobs on the machine slow the demo), or "" where unknown."""
    try:
        return f"; load average {os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):
        return ""


def main(argv: list[str] | None = None) -> list[DemoRun]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="demo", help="where the toy world and the outputs go")
    parser.add_argument("--backbone", default=BACKBONE, help="CLIP weights (default: the bundled micro CLIP)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shots", type=int, default=4, help="shots per class for CoOp, CoCoOp and GenPT")
    parser.add_argument("--steps", nargs="+", choices=[name for name, _ in STEPS], metavar="STEP",
                        help=f"run only these steps (default: all of {[name for name, _ in STEPS]})")
    parser.add_argument("--verbose", action="store_true", help="print train.py's full output")
    args = parser.parse_args(argv)

    from vlprompt.threads import apply_cpu_policy
    from vlprompt.toyworld import write_toyworld

    policy = apply_cpu_policy()
    workdir = Path(args.workdir).resolve()
    started = time.time()
    with progress_shown("toy world", "writing its images (once per --workdir)"):
        world = write_toyworld(workdir / "data")
    print(f"Toy world in {world} ({time.time() - started:.0f} s); CLIP backbone: {args.backbone}")
    print(f"CPU: {policy.describe()}{load_average()}")
    ctx = DemoContext(workdir / "data", workdir, args.backbone, args.seed, args.shots, args.verbose)
    for name, step in STEPS:
        if args.steps and name not in args.steps:
            continue
        print(f"\n== {name}")
        step(ctx)
    print(f"\nResults (seed {args.seed}, {time.time() - started:.0f} s in all; "
          f"python -m vlprompt.tables {workdir / 'output'} --source {SOURCE} prints them again):\n")
    print(results_tables(workdir / "output"))
    return ctx.runs


if __name__ == "__main__":
    from vlprompt.errors import run_cli

    run_cli(main, program="python -m vlprompt.demo")  # a user's mistake (e.g. OMP_NUM_THREADS=x): one line
