"""``datasets.sun397`` is ``vlprompt.datasets.sun397`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.sun397

sys.modules[__name__] = vlprompt.datasets.sun397
