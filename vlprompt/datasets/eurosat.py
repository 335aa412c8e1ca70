"""EuroSAT RGB (10 classes): ``eurosat/2750/<Class>/`` and ``split_zhou_EuroSAT.json``; without the
JSON a 50/20/30 split of the folders is built. Class names are CoOp's descriptive ones."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.splits import read_and_split_data

from .base import SplitDataset

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    tpt_dir = "eurosat"
    split_name = "EuroSAT"
    contents = ("2750/<Class>/<Class>_<n>.jpg",
                "split_zhou_EuroSAT.json  (CoOp's split; in this folder or in DATASET.SPLIT_DIR)")
    tpt_contents = ("<Class>/<Class>_<n>.jpg  (the contents of 2750/)",
                    "split_zhou_EuroSAT.json  (in this folder or in DATASET.SPLIT_DIR)")

    def read_raw_split(self) -> tuple[list, list, list]:
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
