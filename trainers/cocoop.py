"""``trainers.cocoop`` is ``vlprompt.trainers.cocoop`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.cocoop

sys.modules[__name__] = vlprompt.trainers.cocoop
