"""``datasets.base`` is ``vlprompt.datasets.base`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.base

sys.modules[__name__] = vlprompt.datasets.base
