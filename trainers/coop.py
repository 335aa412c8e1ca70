"""``trainers.coop`` is ``vlprompt.trainers.coop`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.coop

sys.modules[__name__] = vlprompt.trainers.coop
