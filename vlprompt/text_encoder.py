"""``vlprompt.text_encoder`` is :mod:`vlprompt.modeling.text_encoder` (the same module object)."""

import sys

import vlprompt.modeling.text_encoder

sys.modules[__name__] = vlprompt.modeling.text_encoder
