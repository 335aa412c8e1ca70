"""``datasets.imagenet_sketch`` is ``vlprompt.datasets.imagenet_sketch`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.imagenet_sketch

sys.modules[__name__] = vlprompt.datasets.imagenet_sketch
