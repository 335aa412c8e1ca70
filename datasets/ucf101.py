"""``datasets.ucf101`` is ``vlprompt.datasets.ucf101`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.ucf101

sys.modules[__name__] = vlprompt.datasets.ucf101
