"""CoOp's ``interpret_prompt.py``: ``python interpret_prompt.py PATH/prompt_learner/model.pth.tar-N TOPK``.

Prints the vocabulary tokens nearest to each learned context vector (vlprompt.interpret), using the
backbone the context was learned with (``--backbone``, else the run's run.json) and decoding CSC contexts too.
"""

import sys

import vlprompt  # noqa: F401 - installs the torchvision shim before anything else imports it
from vlprompt.interpret import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
