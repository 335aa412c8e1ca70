"""``datasets.caltech101`` is ``vlprompt.datasets.caltech101`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.caltech101

sys.modules[__name__] = vlprompt.datasets.caltech101
