"""``datasets.fgvc_aircraft`` is ``vlprompt.datasets.fgvc_aircraft`` (the same module object; see ``datasets/__init__.py``)."""

import sys

import vlprompt.datasets.fgvc_aircraft

sys.modules[__name__] = vlprompt.datasets.fgvc_aircraft
