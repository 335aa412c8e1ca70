"""Describable Textures (47 classes): ``dtd/images/<class>/`` and
``split_zhou_DescribableTextures.json``; without the JSON a 50/20/30 split of the folders is built."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import read_and_split_data

from .base import SplitDataset


@DATASET_REGISTRY.register()
class DescribableTextures(SplitDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    tpt_dir = "DTD"
    tpt_image_subdir = "images"
    split_name = "DescribableTextures"
    contents = ("images/<class>/<class>_<nnnn>.jpg",
                "split_zhou_DescribableTextures.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        return read_and_split_data(self.image_dir)
