"""``datasets.stanford_cars`` is ``vlprompt.datasets.stanford_cars`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.stanford_cars

sys.modules[__name__] = vlprompt.datasets.stanford_cars
