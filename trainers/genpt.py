"""``trainers.genpt`` is ``vlprompt.trainers.genpt`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.genpt

sys.modules[__name__] = vlprompt.trainers.genpt
