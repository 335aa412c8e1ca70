"""ImageNet-Sketch, test only: ``imagenet-sketch/images/<wnid>/`` (the archive's ``sketch/`` folder renamed)
and ``classnames.txt``; labels are the sorted index of the folders present."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY

from .base import ImageNetTestSet


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetTestSet):
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
    tpt_dir = "ImageNet-Sketch"
    contents = ("images/<wnid>/sketch_<n>.JPEG  (the archive's sketch/ folder, renamed)",
                "classnames.txt  (ImageNet's, 1000 lines)")
    tpt_contents = ("<wnid>/sketch_<n>.JPEG  (class folders directly inside)",
                    "classnames.txt  (optional: without it the bundled names, ordered by ImageNet/val's 1000 folders)")
