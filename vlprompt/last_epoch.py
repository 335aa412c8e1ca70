"""``python -m vlprompt.last_epoch MODEL_DIR [CONFIG]``: the epoch to evaluate a trained model at.

The epoch of the newest regular checkpoint in ``MODEL_DIR/<model name>/`` (from the ``checkpoint``
pointer file); if there is none yet, the config's ``OPTIM.MAX_EPOCH``. Scripts use it so that
switching configs (CoCoOp's 10 epochs, CoOp's 50 or 200) needs no hand-edited ``LOADEP``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REGULAR_CHECKPOINT = re.compile(r"^model\.pth\.tar-(\d+)$")


def last_saved_epoch(model_dir: str | Path) -> int | None:
    """Highest epoch among ``<model_dir>/*/model.pth.tar-N`` files, or None."""
    epochs = [
        int(match.group(1))
        for path in Path(model_dir).glob("*/model.pth.tar-*")
        if (match := REGULAR_CHECKPOINT.match(path.name))
    ]
    return max(epochs) if epochs else None


def config_max_epoch(config_file: str | Path) -> int | None:
    """``OPTIM.MAX_EPOCH`` set in a yaml file, or None when the file does not set it."""
    path = Path(config_file)
    data = yaml.safe_load(path.read_text()) or {}
    epoch = (data.get("OPTIM") or {}).get("MAX_EPOCH")
    if epoch is None and data.get("_BASE_"):
        return config_max_epoch(path.parent / data["_BASE_"])
    return epoch


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    epoch = last_saved_epoch(argv[0])
    if epoch is None and len(argv) == 2:
        epoch = config_max_epoch(argv[1])
    if epoch is None:
        print(f"error: no model.pth.tar-N under {argv[0]} and no OPTIM.MAX_EPOCH to fall back on", file=sys.stderr)
        return 1
    print(epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
