"""ImageNet (ILSVRC-2012, 1000 classes): ``imagenet/images/{train,val}/<wnid>/`` and
``imagenet/classnames.txt``; val (sorted into class folders) is both the val and the test split.

CoOp pickles the listing (``preprocessed.pkl``, absolute paths); here the folders are listed again on
each run (sorted, without a stat per image), so nothing can go stale when the data moves.
"""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY

from .base import FewShotImageNet


@DATASET_REGISTRY.register()
class ImageNet(FewShotImageNet):
    dataset_dir = "imagenet"
    image_subdir = "images"
    tpt_dir = "ImageNet"
    contents = ("images/train/<wnid>/<wnid>_<n>.JPEG", "images/val/<wnid>/ILSVRC2012_val_<n>.JPEG  (val in class folders)",
                "classnames.txt  (<wnid> <class name> per line, 1000 lines)")
    tpt_contents = ("val/<wnid>/ILSVRC2012_val_<n>.JPEG  (train/<wnid>/... optional)",
                    "classnames.txt  (optional: without it the bundled names, ordered by val's 1000 folders)")
