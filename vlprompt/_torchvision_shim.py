"""Make ``import torchvision`` work on a CPU-only torch with PyPI's CUDA torchvision wheel.

PyPI's torchvision is built against CUDA; beside a CPU torch its C++ ops fail to load and its
``_meta_registrations`` then raises ``operator torchvision::nms does not exist`` at import time.
Defining the schemas of the two ops it registers fake kernels for (no kernels of our own) lets the
import proceed; transforms, datasets and io work, only ``torchvision.ops`` calls fail, which nothing
here uses. A correctly matched install already defines the ops, so this changes nothing there.
"""

from __future__ import annotations

import torch

_LIBRARY = None  # keeps the fragment alive for the life of the process


def install() -> bool:
    """Define ``torchvision::nms``/``qnms`` schemas if torchvision's own ops are missing.

    Returns True when the shim was installed, False when nothing was needed.
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return False
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined by a working torchvision build
        return False
    except (AttributeError, RuntimeError):
        pass
    try:
        import torchvision  # noqa: F401 - a matched build imports cleanly and defines the ops

        return False
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        import sys

        # The failed import leaves half-initialised modules behind; drop them so it can be retried.
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    except ImportError:
        return False  # torchvision not installed: nothing to fix
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True
