"""Oxford Flowers-102: ``oxford_flowers/jpg/image_<nnnnn>.jpg`` and ``split_zhou_OxfordFlowers.json``;
without the JSON a 50/20/30 split is built from ``imagelabels.mat`` with names from ``cat_to_name.json``."""

from __future__ import annotations

import json
import logging
import os.path as osp
import random
from collections import defaultdict

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.errors import UserKeyError, UserValueError
from vlprompt.splits import make_datum

from .base import SplitDataset

log = logging.getLogger(__name__)


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    tpt_dir = "Flower102"
    tpt_image_subdir = "jpg"
    split_name = "OxfordFlowers"
    raw_files = ("imagelabels.mat", "cat_to_name.json")
    contents = ("jpg/image_<nnnnn>.jpg",
                "split_zhou_OxfordFlowers.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)",
                "imagelabels.mat, cat_to_name.json  (only used without the split file)")

    def read_raw_split(self) -> tuple[list, list, list]:
        """Per label (in order of first appearance in ``imagelabels.mat``): shuffle, cut 50/20/30."""
        from scipy.io import loadmat

        by_label: dict[int, list[str]] = defaultdict(list)
        for index, label in enumerate(loadmat(osp.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]):
            by_label[int(label)].append(osp.join(self.image_dir, f"image_{index + 1:05d}.jpg"))
        with open(osp.join(self.dataset_dir, "cat_to_name.json")) as handle:
            lab2cname = json.load(handle)

        log.info("Splitting data into 50% train, 20% val, and 30% test")
        train, val, test = [], [], []
        for label, impaths in by_label.items():
            random.shuffle(impaths)
            n_total = len(impaths)
            n_train, n_val = round(n_total * 0.5), round(n_total * 0.2)
            if n_train <= 0 or n_val <= 0 or n_total - n_train - n_val <= 0:
                raise UserValueError(f"OxfordFlowers: label {label} has {n_total} images, too few for a 50/20/30 split")
            if str(label) not in lab2cname:
                raise UserKeyError(f'OxfordFlowers: label {label} is missing from "{self.dataset_dir}/cat_to_name.json"')
            cname = lab2cname[str(label)]
            for share, paths in ((train, impaths[:n_train]), (val, impaths[n_train : n_train + n_val]),
                                 (test, impaths[n_train + n_val :])):
                share.extend(make_datum(path, label - 1, cname) for path in paths)
        return train, val, test
