"""``datasets.imagenet_r`` is ``vlprompt.datasets.imagenet_r`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.imagenet_r

sys.modules[__name__] = vlprompt.datasets.imagenet_r
