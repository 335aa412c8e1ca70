"""``trainers.linear_probe`` is ``vlprompt.trainers.linear_probe`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.linear_probe

sys.modules[__name__] = vlprompt.trainers.linear_probe
