"""TPT, C-TPT, Zero, MTA and TDA on the toy world's shifted domains with the micro CLIP: the README's table.

    python scripts/toyworld/test_time_methods.py --root /tmp/toy --out /tmp/toy_tta
    python scripts/toyworld/test_time_methods.py --root /tmp/toy --out /tmp/toy_tta --views 64 --test-per-class 10

Writes the toy world's ToyWorldA, ToyWorldR and ToyWorldSketch under ROOT (``--test-per-class`` test images
per class: images are a pure function of (seed, dataset, label, index), so 2 per class are the first two of
the default 10), runs each method with its shipped ViT-B/16 config (``configs/trainers/<Method>/``), the
micro CLIP, ``--views`` views, fp32, one CPU thread, into OUT/<method> (and TDA once more with the micro CLIP's
own logit scale instead of its fixed 100, into OUT/TDA_own_scale), then prints the test-time methods'
table (``python -m vlprompt.tables OUT --protocol tta --source ToyWorld``). A finished method is not rerun
(its run folder resumes), so the command can be repeated after an interruption.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = {"TPT": "TPT", "CTPT": "CTPT", "Zero": "ZERO", "MTA": "MTA", "TDA": "TDA"}
SETS = ("ToyWorldA", "ToyWorldR", "ToyWorldSketch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="dataset root; the toy world is written under ROOT/toyworld")
    parser.add_argument("--out", required=True, help="output folder (one run folder per method)")
    parser.add_argument("--views", type=int, default=32, help="views per test image, the original included")
    parser.add_argument("--test-per-class", type=int, default=2, help="test images per class and domain")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    python = sys.executable
    subprocess.run([python, "-m", "vlprompt.toyworld", "--root", args.root, "--test-per-class",
                    str(args.test_per_class), "--train-per-class", "1", "--val-per-class", "1", "--datasets", *SETS],
                   check=True, cwd=REPO, env=env)
    runs = [(method, method, []) for method in args.methods]
    if "TDA" in args.methods:  # TDA's fixed logit scale 100 is real CLIP's; the micro CLIP's own is about 21
        runs.append(("TDA", "TDA_own_scale", ["TRAINER.TDA.LOGIT_SCALE", "0.0"]))
    for method, folder, extra in runs:
        node = METHODS[method]
        subprocess.run([
            python, "train.py", "--root", args.root, "--trainer", method,
            "--config-file", f"configs/trainers/{method}/vit_b16.yaml", "--output-dir", str(Path(args.out) / folder),
            "--seed", str(args.seed), "MODEL.BACKBONE.NAME", "micro-clip", "DATALOADER.NUM_WORKERS", "0",
            f"TRAINER.{node}.TEST_SETS", "/".join(SETS), f"TRAINER.{node}.N_VIEWS", str(args.views),
            f"TRAINER.{node}.PREC", "fp32", f"TRAINER.{node}.PRINT_FREQ", "1000", *extra,
        ], check=True, cwd=REPO, env=env)
    return subprocess.run([python, "-m", "vlprompt.tables", args.out, "--protocol", "tta", "--source", "ToyWorld"],
                          check=False, cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
