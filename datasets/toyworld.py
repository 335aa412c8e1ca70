"""The toy world (vlprompt.toyworld): a generated image-text world in CoOp's split-JSON layout, one
dataset per domain, plus novel-class and attribute-only variants. Write it with
``python -m vlprompt.toyworld --root DIR``; ``DATASET.ROOT`` is then ``DIR``."""

from __future__ import annotations

import os.path as osp

from vlprompt.compat import DATASET_REGISTRY, DatasetBase
from vlprompt.splits import dataset_root, fewshot_and_subsample, read_split
from vlprompt.toyworld.datasets import WORLD_FOLDER, dataset_specs


class ToyWorldDataset(DatasetBase):
    """Reads ``<ROOT>/toyworld/<folder>/split_zhou_<NAME>.json``; subclasses name the dataset."""

    dataset_name = ""

    def __init__(self, cfg) -> None:
        spec = dataset_specs()[self.dataset_name]
        self.dataset_dir = osp.join(dataset_root(cfg), WORLD_FOLDER, spec.folder)
        self.image_dir = osp.join(self.dataset_dir, "images")
        self.split_path = osp.join(self.dataset_dir, spec.split_file)
        if not osp.isfile(self.split_path):
            raise FileNotFoundError(
                f'Toy-world split "{self.split_path}" not found: DATASET.ROOT must hold {WORLD_FOLDER}/. '
                f"Write it with: python -m vlprompt.toyworld --root {cfg.DATASET.ROOT or 'DIR'}"
            )
        train, val, test = read_split(self.split_path, self.image_dir)
        train, val, test = fewshot_and_subsample(cfg, self.dataset_dir, train, val, test)
        super().__init__(train_x=train, val=val, test=test)


@DATASET_REGISTRY.register()
class ToyWorld(ToyWorldDataset):
    """24 pretrained combinations, photo domain (the ImageNet analogue)."""

    dataset_name = "ToyWorld"


@DATASET_REGISTRY.register()
class ToyWorldSketch(ToyWorldDataset):
    """The same classes as edge drawings (the ImageNet-Sketch analogue)."""

    dataset_name = "ToyWorldSketch"


@DATASET_REGISTRY.register()
class ToyWorldR(ToyWorldDataset):
    """The same classes with an altered palette and cartoon style (the ImageNet-R analogue)."""

    dataset_name = "ToyWorldR"


@DATASET_REGISTRY.register()
class ToyWorldA(ToyWorldDataset):
    """The same classes as hard crops among clutter (the ImageNet-A analogue)."""

    dataset_name = "ToyWorldA"


@DATASET_REGISTRY.register()
class ToyWorldNovel(ToyWorldDataset):
    """Base = the 24 pretrained classes (labels 0-23), new = 24 combinations held out of pretraining."""

    dataset_name = "ToyWorldNovel"


@DATASET_REGISTRY.register()
class ToyWorldPatterns(ToyWorldDataset):
    """Four classes named by their pattern alone: the hand-crafted prompt is poor here."""

    dataset_name = "ToyWorldPatterns"
