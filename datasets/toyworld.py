"""``datasets.toyworld`` is ``vlprompt.datasets.toyworld`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.toyworld

sys.modules[__name__] = vlprompt.datasets.toyworld
