"""``trainers.zsclip`` is ``vlprompt.trainers.zsclip`` (the same module object; see ``trainers/__init__.py``)."""

import sys

import vlprompt.trainers.zsclip

sys.modules[__name__] = vlprompt.trainers.zsclip
