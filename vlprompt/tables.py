"""``python -m vlprompt.tables OUTPUT_ROOT --protocol base2new --format md``: paper tables from runs.

The implementation lives in :mod:`vlprompt.results.cli`; this module is the short command name.
"""

import sys

from vlprompt.results.cli import main

if __name__ == "__main__":
    sys.exit(main())
