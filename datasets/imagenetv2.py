"""``datasets.imagenetv2`` is ``vlprompt.datasets.imagenetv2`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.imagenetv2

sys.modules[__name__] = vlprompt.datasets.imagenetv2
