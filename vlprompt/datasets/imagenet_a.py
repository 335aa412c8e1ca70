"""ImageNet-A, test only: ``imagenet-adversarial/imagenet-a/<wnid>/`` (200 folders; README.txt skipped)
and ImageNet's ``classnames.txt``. Labels are the index among the 200 sorted folders, so the classifier
covers exactly those 200 classes."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY

from .base import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetTestSet):
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    tpt_dir = "imagenet-a"
    contents = ("imagenet-a/<wnid>/<name>.jpg  (200 class folders; README.txt is skipped)",
                "classnames.txt  (ImageNet's, 1000 lines)")
    tpt_contents = ("<wnid>/<name>.jpg  (200 class folders)",
                    "classnames.txt  (optional: without it the bundled names, ordered by ImageNet/val's 1000 folders)")
