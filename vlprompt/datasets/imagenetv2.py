"""ImageNet-V2 (matched frequency), test only: ``imagenetv2/imagenetv2-matched-frequency-format-val/<i>/``
for i = 0..999, folder ``i`` holding ImageNet class ``i`` (the i-th line of ``classnames.txt``)."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES

from .base import ImageNetTestSet, folder_items


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetTestSet):
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    tpt_dir = "imagenetv2-matched-frequency-format-val"
    contents = ("imagenetv2-matched-frequency-format-val/<0..999>/<hash>.jpeg  (all 1000 numbered folders)",
                "classnames.txt  (ImageNet's, 1000 lines)")
    tpt_contents = ("<0..999>/<hash>.jpeg", "classnames.txt  (optional: the bundled ImageNet names are used without it)")

    def bundled_classnames(self, tried: str) -> dict[str, str]:
        """Folder ``i`` is ImageNet class ``i``: the bundled names need no other folder to order them."""
        return {str(label): name for label, name in enumerate(IMAGENET_CLASSNAMES)}

    def read_data(self, classnames: dict[str, str]) -> list:
        """Folder ``str(i)`` is label ``i`` for every line of classnames.txt (not a sorted listing: "10"
        sorts before "2")."""
        folders = [str(label) for label in range(len(classnames))]
        absent = [folder for folder in folders if not osp.isdir(osp.join(self.image_dir, folder))]
        if absent:
            raise self.layout_error(
                f'{len(absent)} of the {len(folders)} numbered class folders are missing from "{self.image_dir}" '
                f"(first: {absent[0]})"
            )
        return folder_items(self.image_dir, folders, list(classnames.values()))
