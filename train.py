"""CoOp-compatible entry point: ``python train.py --root DATA --trainer CoOp ... [KEY VALUE ...]``."""

import vlprompt  # noqa: F401 - installs the torchvision shim (and OpenMP's wait policy) before torch loads
from vlprompt.cli import main
from vlprompt.errors import run_cli
from vlprompt.threads import apply_cpu_policy

if __name__ == "__main__":
    run_cli(apply_cpu_policy, program="train.py")  # torch's threads for the CPUs this process is given
    main()  # flags from sys.argv; a user's mistake prints one line (vlprompt.cli.command)
