"""Caltech-101 (100 classes): ``caltech-101/101_ObjectCategories/<folder>/`` and
``split_zhou_Caltech101.json``; without the JSON a 50/20/30 split of the folders is built."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import read_and_split_data

from .base import SplitDataset

IGNORED = ["BACKGROUND_Google", "Faces_easy"]
# CoOp's names for four folders; labels stay in Python's sorted folder order (upper case first).
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


@DATASET_REGISTRY.register()
class Caltech101(SplitDataset):
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    tpt_dir = "Caltech101"
    split_name = "Caltech101"
    contents = ("101_ObjectCategories/<folder>/image_<nnnn>.jpg  (BACKGROUND_Google and Faces_easy are ignored)",
                "split_zhou_Caltech101.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)")
    tpt_contents = ("<folder>/image_<nnnn>.jpg  (the contents of 101_ObjectCategories)",
                    "split_zhou_Caltech101.json  (in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        return read_and_split_data(self.image_dir, ignored=IGNORED, new_cnames=NEW_CNAMES)
