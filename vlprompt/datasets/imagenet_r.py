"""ImageNet-R(endition), test only: ``imagenet-rendition/imagenet-r/<wnid>/`` (200 folders; README.txt
skipped) and ImageNet's ``classnames.txt``. Labels are the index among the 200 sorted folders."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY

from .base import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetTestSet):
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    tpt_dir = "imagenet-r"
    contents = ("imagenet-r/<wnid>/<name>.jpg  (200 class folders; README.txt is skipped)",
                "classnames.txt  (ImageNet's, 1000 lines)")
    tpt_contents = ("<wnid>/<name>.jpg  (200 class folders)",
                    "classnames.txt  (optional: without it the bundled names, ordered by ImageNet/val's 1000 folders)")
