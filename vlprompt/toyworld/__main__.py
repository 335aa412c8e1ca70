"""``python -m vlprompt.toyworld --root DIR``: write the toy-world datasets under ``DIR/toyworld``."""

from __future__ import annotations

import argparse
import time

from vlprompt.toyworld.datasets import WORLD_SEED, dataset_specs, write_toyworld
from vlprompt.toyworld.render import DEFAULT_SIZE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="dataset root (what --root / DATASET.ROOT will be)")
    parser.add_argument("--seed", type=int, default=WORLD_SEED, help="world seed (class choice and images)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--test-per-class", type=int, help="default: 10 (50 for ToyWorldPatterns)")
    parser.add_argument("--datasets", nargs="+", choices=sorted(dataset_specs()), help="default: all")
    parser.add_argument("--overwrite", action="store_true", help="rewrite even if world.json matches")
    args = parser.parse_args(argv)
    started = time.time()
    folder = write_toyworld(
        args.root, seed=args.seed, image_size=args.image_size, train_per_class=args.train_per_class,
        val_per_class=args.val_per_class, test_per_class=args.test_per_class, names=args.datasets,
        overwrite=args.overwrite,
    )
    print(f"Toy world in {folder} ({time.time() - started:.1f} s)")


if __name__ == "__main__":
    main()
