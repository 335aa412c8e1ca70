"""``datasets.oxford_pets`` is ``vlprompt.datasets.oxford_pets`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.oxford_pets

sys.modules[__name__] = vlprompt.datasets.oxford_pets
