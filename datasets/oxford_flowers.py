"""``datasets.oxford_flowers`` is ``vlprompt.datasets.oxford_flowers`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.oxford_flowers

sys.modules[__name__] = vlprompt.datasets.oxford_flowers
