"""``python -m vlprompt.results`` = ``python -m vlprompt.tables``."""

import sys

from vlprompt.results.cli import main

sys.exit(main())
