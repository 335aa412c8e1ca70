"""Stanford Cars (196 classes): ``stanford_cars/{cars_train,cars_test}/`` and
``split_zhou_StanfordCars.json`` (paths relative to ``stanford_cars/``); without the JSON the split is
built from the devkit's ``.mat`` annotations (train annotations split 80/20 into train and val)."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import make_datum, split_trainval

from .base import SplitDataset


@DATASET_REGISTRY.register()
class StanfordCars(SplitDataset):
    dataset_dir = "stanford_cars"
    tpt_dir = "StanfordCars"
    split_name = "StanfordCars"
    raw_files = ("devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat", "devkit/cars_meta.mat")
    contents = ("cars_train/<nnnnn>.jpg, cars_test/<nnnnn>.jpg",
                "split_zhou_StanfordCars.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)",
                ("devkit/cars_train_annos.mat, devkit/cars_meta.mat, cars_test_annos_withlabels.mat  "
                 "(only used without the split file)"))

    def read_raw_split(self) -> tuple[list, list, list]:
        meta = osp.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data("cars_train", osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta)
        test = self.read_data("cars_test", osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir: str, anno_file: str, meta_file: str) -> list:
        """Items of a devkit annotation file; class names get the model year moved to the front."""
        from scipy.io import loadmat

        annotations = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        items = []
        for annotation in annotations:
            label = int(annotation["class"][0, 0]) - 1
            *words, year = str(class_names[label][0]).split(" ")
            impath = osp.join(self.dataset_dir, image_dir, str(annotation["fname"][0]))
            items.append(make_datum(impath, label, " ".join([year, *words])))
        return items
