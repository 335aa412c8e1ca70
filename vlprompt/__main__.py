"""``python -m vlprompt COMMAND [ARGS ...]`` = the ``vlprompt`` command (:mod:`vlprompt.commands`)."""

import sys

from vlprompt.commands import main

if __name__ == "__main__":
    sys.exit(main())
