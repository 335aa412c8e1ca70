"""``trainers.tpt`` is ``vlprompt.trainers.tpt`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.tpt

sys.modules[__name__] = vlprompt.trainers.tpt
