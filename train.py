"""CoOp-compatible entry point: ``python train.py --root DATA --trainer CoOp ... [KEY VALUE ...]``."""

import sys

import vlprompt  # noqa: F401 - installs the torchvision shim before anything else imports it
from vlprompt.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
