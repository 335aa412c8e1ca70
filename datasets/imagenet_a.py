"""``datasets.imagenet_a`` is ``vlprompt.datasets.imagenet_a`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.imagenet_a

sys.modules[__name__] = vlprompt.datasets.imagenet_a
