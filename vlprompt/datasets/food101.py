"""Food-101 (101 classes): ``food-101/images/<class>/`` and ``split_zhou_Food101.json``; without the
JSON a 50/20/30 split of the folders is built (the official meta/ lists are not used, as in CoOp)."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import read_and_split_data

from .base import SplitDataset


@DATASET_REGISTRY.register()
class Food101(SplitDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    tpt_dir = "Food101"
    tpt_image_subdir = "images"
    split_name = "Food101"
    contents = ("images/<class>/<id>.jpg",
                "split_zhou_Food101.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        return read_and_split_data(self.image_dir)
