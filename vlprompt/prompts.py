"""``vlprompt.prompts`` is :mod:`vlprompt.modeling.prompts` (the same module object)."""

import sys

import vlprompt.modeling.prompts

sys.modules[__name__] = vlprompt.modeling.prompts
