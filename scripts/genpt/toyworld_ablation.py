"""GenPT's ablation on the toy world's base-to-new protocol, beside zero-shot CLIP, CoOp and CoCoOp.

Every run is the demo's (``vlprompt.demo``): ToyWorldNovel, the bundled micro CLIP, 4 shots, 5 epochs,
fp32, the shipped yamls; trained on the base classes, tested on base and new. CoOp runs with GenPT's
settings (4 context tokens from "a photo of a", batch 4), which is GenPT with both terms off. Results
go to a JSON file (one entry per variant and seed, written after every run, so an interrupted grid
resumes where it stopped) and print as a Markdown table of mean ± std over the seeds:

    python scripts/genpt/toyworld_ablation.py --seeds 1 2 3 --jobs 2 --out toyworld_ablation.json
    python scripts/genpt/toyworld_ablation.py --variants zero-shot coop genpt --seeds 1
    python scripts/genpt/toyworld_ablation.py --list
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

G = "TRAINER.GENPT."
COMMON = {"GenPT": [G + "PREC", "fp32", "OPTIM.MAX_EPOCH", "5"],
          "CoCoOp": ["TRAINER.COCOOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "5"],
          "CoOp": ["TRAINER.COOP.PREC", "fp32", "OPTIM.MAX_EPOCH", "5", "TRAINER.COOP.N_CTX", "4",
                   "TRAINER.COOP.CTX_INIT", "a photo of a"]}


def genpt(*opts: str) -> list[str]:
    """``TRAINER.GENPT.<KEY> VALUE`` pairs from ``KEY VALUE`` pairs."""
    return [G + item if i % 2 == 0 else item for i, item in enumerate(opts)]


# name -> (trainer, options beyond the shipped config, what it tests). GenPT rows change one factor
# of the shipped defaults (InfoNCE, cosine critic, LAMBDA_MI 10, MI_TAU 0.5, cross-class Mixup).
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "zero-shot": ("ZeroshotCLIP", [], 'zero-shot CLIP, "a photo of a {}."'),
    "coop": ("CoOp", [], "CoOp with GenPT's settings (= GenPT with both terms off)"),
    "cocoop": ("CoCoOp", [], "CoCoOp, its shipped config (batch 1)"),
    "genpt": ("GenPT", [], "GenPT, shipped defaults"),
    "genpt-first": ("GenPT", genpt("LAMBDA_MI", "1.0", "MI_TAU", "0.07", "AUG_MODE", "intra_class_mixup"),
                    "GenPT as first built (LAMBDA_MI 1, MI_TAU 0.07, intra-class Mixup)"),
    # the estimator and its critic
    "jsd": ("GenPT", genpt("MI_ESTIMATOR", "jsd"), "Jensen-Shannon estimator"),
    "dv": ("GenPT", genpt("MI_ESTIMATOR", "dv"), "Donsker-Varadhan (MINE) estimator"),
    "infonce-learned": ("GenPT", genpt("MI_CRITIC", "learned"), "InfoNCE, learned critic"),
    "jsd-learned": ("GenPT", genpt("MI_ESTIMATOR", "jsd", "MI_CRITIC", "learned"), "JSD, learned critic"),
    "dv-learned": ("GenPT", genpt("MI_ESTIMATOR", "dv", "MI_CRITIC", "learned"), "DV (MINE), learned critic"),
    "visual": ("GenPT", genpt("LAMBDA_MI_VISUAL", "1.0"), "plus I(mixed image; soft text), cosine critic"),
    "visual-learned": ("GenPT", genpt("LAMBDA_MI_VISUAL", "1.0", "MI_CRITIC", "learned"),
                       "plus I(mixed image; soft text), learned critics"),
    # the augmentation
    "intra-class": ("GenPT", genpt("AUG_MODE", "intra_class_mixup"), "Mixup within a class"),
    "inter-class": ("GenPT", genpt("AUG_MODE", "inter_class_mixup"), "Mixup across the batch (Zhang et al.)"),
    "pixel": ("GenPT", genpt("AUG_MODE", "pixel_mixup"), "Mixup of same-class images"),
    "no-aug": ("GenPT", genpt("AUG_MODE", "none"), "no augmentation term"),
    # the MI term's weight and temperature
    "no-mi": ("GenPT", genpt("LAMBDA_MI", "0.0"), "no MI term (Mixup only)"),
    "mi-first": ("GenPT", genpt("LAMBDA_MI", "1.0", "MI_TAU", "0.07"), "the first MI weight and temperature"),
    "lambda-5": ("GenPT", genpt("LAMBDA_MI", "5.0"), "LAMBDA_MI 5"),
    "lambda-20": ("GenPT", genpt("LAMBDA_MI", "20.0"), "LAMBDA_MI 20"),
    "tau-0.2": ("GenPT", genpt("MI_TAU", "0.2"), "MI_TAU 0.2"),
    "tau-1": ("GenPT", genpt("MI_TAU", "1.0"), "MI_TAU 1.0"),
}


def variant_opts(name: str) -> tuple[str, list[str]]:
    trainer, extra, _ = VARIANTS[name]
    return trainer, [*COMMON.get(trainer, []), *extra]


def describe_variants() -> dict:
    """Every variant's trainer, options and purpose (written beside the results)."""
    return {name: dict(zip(("trainer", "options"), variant_opts(name)), about=VARIANTS[name][2]) for name in VARIANTS}


def run_one(name: str, seed: int, data: str, workdir: str, threads: int) -> dict:
    """Train and test one variant for one seed; returns its base, new and harmonic-mean accuracy."""
    import torch

    from vlprompt import demo
    from vlprompt.results import harmonic_mean

    torch.set_num_threads(threads)
    trainer, opts = variant_opts(name)
    ctx = demo.DemoContext(Path(data), Path(workdir) / name / f"seed{seed}", seed=seed, shots=4)
    started = time.time()
    if trainer == "ZeroshotCLIP":
        for classes in ("base", "new"):
            ctx.train(trainer, demo.BASE_TO_NEW_DATASET, demo.ZERO_SHOT_CFG,
                      ctx.output_dir("base2new", f"test_{classes}", trainer), flags=("--eval-only",), classes=classes)
    else:
        config = demo.COCOOP_CFG if trainer == "CoCoOp" else demo.GENPT_CFG
        demo.base_to_new(ctx, trainer, config, opts)
    base, new = (run.accuracy for run in ctx.runs)
    return {"variant": name, "seed": seed, "base": base, "new": new, "h": harmonic_mean(base, new),
            "seconds": round(time.time() - started, 1)}


def summarise(results: list[dict], names: list[str]) -> str:
    """A Markdown table: Base / New / H as mean ± std over the seeds of each variant."""
    lines = ["| variant | seeds | Base | New | H |", "|---|---:|---:|---:|---:|"]
    for name in names:
        rows = [r for r in results if r["variant"] == name]
        if not rows:
            continue
        cells = []
        for key in ("base", "new", "h"):
            values = [r[key] for r in rows]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="output/toyworld_ablation", help="toy world and run outputs go here")
    parser.add_argument("--out", default=None, help="results JSON (default: WORKDIR/results.json)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="NAME", help="default: all")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each with --threads torch threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--list", action="store_true", help="list the variants and their options, then stop")
    args = parser.parse_args(argv)
    names = args.variants or list(VARIANTS)
    if args.list:
        for name in names:
            trainer, opts = variant_opts(name)
            print(f"{name:24} {VARIANTS[name][2]}\n{'':24} {trainer} {' '.join(opts)}")
        return []

    from vlprompt.engine.checkpoint import atomic_write_text
    from vlprompt.toyworld import write_toyworld

    workdir = Path(args.workdir).resolve()
    data = workdir / "data"
    write_toyworld(data)
    out = Path(args.out) if args.out else workdir / "results.json"
    results = json.loads(out.read_text())["runs"] if out.is_file() else []
    done = {(r["variant"], r["seed"]) for r in results}
    todo = [(name, seed) for name in names for seed in args.seeds if (name, seed) not in done]
    print(f"{len(todo)} runs to do ({len(done)} already in {out})")

    def record(result: dict) -> None:
        results.append(result)
        print(f"  {result['variant']} seed {result['seed']}: base {result['base']:.2f} new {result['new']:.2f} "
              f"H {result['h']:.2f} [{result['seconds']:.0f} s]", flush=True)
        atomic_write_text(out, json.dumps({"variants": describe_variants(), "runs": results}, indent=1))

    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run_one, n, s, str(data), str(workdir), args.threads) for n, s in todo]
            for future in futures:
                record(future.result())
    else:
        for name, seed in todo:
            record(run_one(name, seed, str(data), str(workdir), args.threads))
    print(summarise(results, names))
    return results


if __name__ == "__main__":
    main()
