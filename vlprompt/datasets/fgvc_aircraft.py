"""FGVC-Aircraft (100 variants): the ``data/`` folder of fgvc-aircraft-2013b as ``fgvc_aircraft/``.
There is no split JSON; the official train/val/test lists are used as they are."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.errors import UserKeyError
from vlprompt.splits import make_datum

from .base import SplitDataset


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    tpt_dir = "fgvc_aircraft"
    tpt_image_subdir = "images"
    raw_files = ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")
    contents = ("images/<image id>.jpg",
                "variants.txt, images_variant_train.txt, images_variant_val.txt, images_variant_test.txt")

    def read_raw_split(self) -> tuple[list, list, list]:
        classnames = self.read_text_lines("variants.txt")
        cname2lab = {name: label for label, name in enumerate(classnames)}
        return tuple(self.read_data(cname2lab, f"images_variant_{split}.txt") for split in ("train", "val", "test"))

    def read_data(self, cname2lab: dict[str, int], split_file: str) -> list:
        """Lines ``<image id> <variant name, may contain spaces>``."""
        items = []
        for line in self.read_text_lines(split_file):
            image_id, _, classname = line.partition(" ")
            if classname not in cname2lab:
                raise UserKeyError(f'{self.dataset_dir}/{split_file}: variant "{classname}" is not in variants.txt')
            items.append(make_datum(osp.join(self.image_dir, image_id + ".jpg"), cname2lab[classname], classname))
        return items
