"""Average test results over seed folders, as CoOp's ``parse_test_res.py`` (same options and output).

    python parse_test_res.py output/my_experiment [--ci95] [--test-log] [--multi-exp] [--keyword accuracy]

Also reads ``Finished training`` logs and re-runs' ``log.txt-<timestamp>``, and names on stderr every
folder it could not parse (see vlprompt/results/parse.py). For paper tables use ``python -m vlprompt.tables``.
"""

import sys

import vlprompt  # noqa: F401 - installs the torchvision shim before anything else imports it
from vlprompt.results.parse import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
