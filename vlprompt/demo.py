"""The README's main job: zero-shot CLIP through ``train.py`` on OxfordPets.

Real data and weights are used when present (``--root`` holding ``oxford_pets/`` and the backbone's
weights in ``VLPROMPT_CLIP_DIR``); otherwise a synthetic OxfordPets tree and a tiny random-weight
CLIP are written under ``--workdir`` first, so the demo runs on a fresh machine with no downloads.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlprompt.clip_backbone import ClipWeightsNotFoundError, resolve_clip_weights

REPO_ROOT = Path(__file__).resolve().parent.parent


def config_path(relative: str) -> str:
    """A file under the repository's ``configs/`` (the demo runs from a checkout)."""
    path = REPO_ROOT / "configs" / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the demo from a vlprompt checkout (configs/ is needed)")
    return str(path)


def weights_present(backbone: str) -> bool:
    """Whether the backbone's weights are on disk (never downloads: the demo must work offline)."""
    previous = os.environ.get("VLPROMPT_OFFLINE")
    os.environ["VLPROMPT_OFFLINE"] = "1"
    try:
        resolve_clip_weights(backbone)
        return True
    except ClipWeightsNotFoundError:
        return False
    finally:
        if previous is None:
            del os.environ["VLPROMPT_OFFLINE"]
        else:
            os.environ["VLPROMPT_OFFLINE"] = previous


def prepare_inputs(root: str | None, backbone: str, workdir: Path) -> tuple[str, str, bool]:
    """(data root, backbone name or file, synthetic?) — real ones when available, else generated."""
    if root and (Path(root) / "oxford_pets").is_dir() and weights_present(backbone):
        return str(root), backbone, False

    from vlprompt.synthetic_data import write_oxford_pets
    from vlprompt.tiny_clip import save_tiny_clip

    data_root = workdir / "data"
    if not (data_root / "oxford_pets").is_dir():
        write_oxford_pets(data_root)
    weights = workdir / "tiny_clip_vit.pt"
    if not weights.is_file():
        save_tiny_clip(weights, kind="vit")
    return str(data_root), str(weights), True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.environ.get("DATA", ""), help="dataset root (default: $DATA)")
    parser.add_argument("--backbone", default="ViT-B/16", help="CLIP backbone used with real data")
    parser.add_argument("--workdir", default="demo", help="where generated inputs and outputs go")
    args = parser.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    root, backbone, synthetic = prepare_inputs(args.root, args.backbone, workdir)
    if synthetic:
        print(f"No real OxfordPets/CLIP weights found: using a synthetic tree in {root} and a tiny CLIP {backbone}")

    from vlprompt.cli import main as train_main

    output_dir = workdir / "output" / "zeroshot" / "oxford_pets"
    trainer = train_main([
        "--root", root,
        "--trainer", "ZeroshotCLIP",
        "--dataset-config-file", config_path("datasets/oxford_pets.yaml"),
        "--config-file", config_path("trainers/CoOp/vit_b16.yaml"),
        "--output-dir", str(output_dir),
        "--eval-only",
        "MODEL.BACKBONE.NAME", backbone,
        "DATALOADER.NUM_WORKERS", "0",
    ])
    accuracy = trainer.test_results["accuracy"]
    print(f"\nZeroshotCLIP on OxfordPets{' (synthetic)' if synthetic else ''}: accuracy {accuracy:.1f}%")
    print(f"Log: {output_dir / 'log.txt'}")


if __name__ == "__main__":
    main()
