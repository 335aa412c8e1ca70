"""``datasets.dtd`` is ``vlprompt.datasets.dtd`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.dtd

sys.modules[__name__] = vlprompt.datasets.dtd
