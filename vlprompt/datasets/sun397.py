"""SUN397: ``sun397/SUN397/<letter>/<class>/`` and ``split_zhou_SUN397.json``; without the JSON the
split is built from ``ClassName.txt`` and the first official partition (``Training_01.txt``, split 80/20
into train and val, and ``Testing_01.txt``)."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.errors import UserKeyError
from vlprompt.splits import make_datum, split_trainval

from .base import SplitDataset


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    tpt_dir = "SUN397"
    split_name = "SUN397"
    raw_files = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")
    contents = ("SUN397/<letter>/<class>[/<subclass>]/sun_<id>.jpg",
                "split_zhou_SUN397.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)",
                "ClassName.txt, Training_01.txt, Testing_01.txt  (only used without the split file)")
    tpt_contents = ("<letter>/<class>[/<subclass>]/sun_<id>.jpg  (the contents of SUN397/)",
                    "split_zhou_SUN397.json  (in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        classnames = [line[1:] for line in self.read_text_lines("ClassName.txt")]  # drop the leading "/"
        cname2lab = {name: label for label, name in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab: dict[str, int], text_file: str) -> list:
        """Lines ``/a/abbey/sun_x.jpg``; the class name drops the letter and reverses the rest
        (``a/apartment_building/outdoor`` → ``outdoor apartment_building``)."""
        items = []
        for line in self.read_text_lines(text_file):
            imname = line[1:]
            folder = osp.dirname(imname)
            if folder not in cname2lab:
                raise UserKeyError(f'{self.dataset_dir}/{text_file}: class "{folder}" is not in ClassName.txt')
            classname = " ".join(folder.split("/")[1:][::-1])
            items.append(make_datum(osp.join(self.image_dir, imname), cname2lab[folder], classname))
        return items
