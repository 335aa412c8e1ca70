"""Oxford-IIIT Pet (37 breeds) in CoOp's layout: ``oxford_pets/{images,annotations}`` plus
``split_zhou_OxfordPets.json``; without the JSON the split is rebuilt from the annotations."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY, Datum
from vlprompt.errors import UserValueError
from vlprompt.splits import make_datum, split_trainval

from .base import SplitDataset

SPLIT_NOTE = "split_zhou_OxfordPets.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)"


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    """Pets: labels are the annotation class ids minus one, class names the lower-cased breed."""

    dataset_dir = "oxford_pets"
    image_subdir = "images"
    tpt_dir = "OxfordPets"
    split_name = "OxfordPets"
    raw_files = ("annotations/trainval.txt", "annotations/test.txt")
    contents = ("images/<Breed>_<n>.jpg", SPLIT_NOTE,
                "annotations/trainval.txt, annotations/test.txt  (only used without the split file)")
    tpt_contents = ("<Breed>_<n>.jpg", SPLIT_NOTE)

    def setup_paths(self, cfg) -> None:
        super().setup_paths(cfg)
        self.anno_dir = osp.join(self.dataset_dir, "annotations")

    def read_raw_split(self) -> tuple[list, list, list]:
        trainval = self.read_data("trainval.txt")
        test = self.read_data("test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, split_file: str) -> list[Datum]:
        """Items of ``annotations/<split_file>``: lines ``<imname> <class_id> <species> <breed_id>``."""
        filepath = osp.join(self.anno_dir, split_file)
        items = []
        with open(filepath) as handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                fields = line.split(" ")
                if len(fields) != 4:
                    raise UserValueError(f'{filepath}:{line_number}: expected "<imname> <class_id> <species> '
                                     f'<breed_id>", got "{line}"')
                imname, class_id = fields[0], int(fields[1])
                # "american_pit_bull_terrier_12" -> "american_pit_bull_terrier"; cat names are capitalised.
                breed = imname.rsplit("_", 1)[0].lower()
                items.append(make_datum(osp.join(self.image_dir, imname + ".jpg"), class_id - 1, breed))
        return items
