"""CoOp-compatible entry point: ``python train.py --root DATA --trainer CoOp ... [KEY VALUE ...]``."""

import vlprompt  # noqa: F401 - installs the torchvision shim before anything else imports it
from vlprompt.cli import main

if __name__ == "__main__":
    main()  # flags from sys.argv; a user's mistake prints one line (vlprompt.cli.command)
