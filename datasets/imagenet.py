"""``datasets.imagenet`` is ``vlprompt.datasets.imagenet`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.imagenet

sys.modules[__name__] = vlprompt.datasets.imagenet
