"""``datasets.food101`` is ``vlprompt.datasets.food101`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.food101

sys.modules[__name__] = vlprompt.datasets.food101
