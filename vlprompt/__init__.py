"""vlprompt: prompt tuning for CLIP-like vision-language models, CoOp/Dassl compatible.

Importing the package makes the environment usable before anything touches torchvision or clip: it
installs the torchvision shim (CPU torch beside PyPI's CUDA torchvision).
"""

from __future__ import annotations

from vlprompt import _torchvision_shim

__version__ = "0.1.0"

_torchvision_shim.install()
