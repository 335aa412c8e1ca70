"""``datasets.eurosat`` is ``vlprompt.datasets.eurosat`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.eurosat

sys.modules[__name__] = vlprompt.datasets.eurosat
