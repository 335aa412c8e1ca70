"""vlprompt: prompt tuning for CLIP-like vision-language models, CoOp/Dassl compatible.

Importing the package makes the environment usable before anything touches torchvision or clip: it
installs the torchvision shim (CPU torch beside PyPI's CUDA torchvision). If torch is not imported yet,
it also sets ``OMP_WAIT_POLICY=PASSIVE`` unless set, so torch's idle OpenMP threads sleep instead of
spinning (:mod:`vlprompt.threads` says why; the thread count is the commands' business, not the import's).
"""

from __future__ import annotations

from vlprompt import threads

threads.prepare_openmp()  # before the shim imports torch: OpenMP reads its environment once, at load

from vlprompt import _torchvision_shim  # after prepare_openmp, which must precede torch

__version__ = "0.1.0"

_torchvision_shim.install()
