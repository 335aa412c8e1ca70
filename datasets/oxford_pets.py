"""Oxford-IIIT Pet (37 breeds) in CoOp's layout: ``oxford_pets/{images,annotations}`` plus
``split_zhou_OxfordPets.json``; without the JSON the split is rebuilt from the annotations."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY, DatasetBase, Datum
from vlprompt.splits import dataset_root, fewshot_and_subsample, read_split, split_trainval, try_save_split


@DATASET_REGISTRY.register()
class OxfordPets(DatasetBase):
    """Pets: labels are the annotation class ids minus one, class names the lower-cased breed."""

    dataset_dir = "oxford_pets"

    def __init__(self, cfg) -> None:
        self.dataset_dir = osp.join(dataset_root(cfg), self.dataset_dir)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.anno_dir = osp.join(self.dataset_dir, "annotations")
        self.split_path = osp.join(self.dataset_dir, "split_zhou_OxfordPets.json")

        if osp.exists(self.split_path):
            train, val, test = read_split(self.split_path, self.image_dir)
        else:
            trainval = self.read_data("trainval.txt")
            test = self.read_data("test.txt")
            train, val = split_trainval(trainval)
            try_save_split(train, val, test, self.split_path, self.image_dir)

        train, val, test = fewshot_and_subsample(cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)

    def read_data(self, split_file: str) -> list[Datum]:
        """Items of ``annotations/<split_file>``: lines ``<imname> <class_id> <species> <breed_id>``."""
        filepath = osp.join(self.anno_dir, split_file)
        if not osp.isfile(filepath):
            raise FileNotFoundError(
                f'Neither "{self.split_path}" nor the annotation file "{filepath}" exists; '
                f"DATASET.ROOT must hold oxford_pets/ with images/ and annotations/ (or the split JSON)"
            )
        items = []
        with open(filepath) as handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split(" ")
                if len(fields) != 4:
                    raise ValueError(f'{filepath}:{line_number}: expected "<imname> <class_id> <species> '
                                     f'<breed_id>", got "{line}"')
                imname, class_id = fields[0], int(fields[1])
                # "american_pit_bull_terrier_12" -> "american_pit_bull_terrier"; cat names are capitalised.
                breed = imname.rsplit("_", 1)[0].lower()
                impath = osp.join(self.image_dir, imname + ".jpg")
                items.append(Datum(impath=impath, label=class_id - 1, classname=breed))
        return items
