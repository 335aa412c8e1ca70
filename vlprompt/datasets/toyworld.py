"""The toy world (vlprompt.toyworld): a generated image-text world in CoOp's split-JSON layout, one
dataset per domain plus novel-class and attribute-only variants (``configs/datasets/toyworld*.yaml``).
Write it with ``python -m vlprompt.toyworld --root DIR``; ``DATASET.ROOT`` is then ``DIR``."""

from __future__ import annotations

from vlprompt.compat import DATASET_REGISTRY
from vlprompt.toyworld.datasets import WORLD_FOLDER, dataset_specs

from .base import SplitDataset


class ToyWorldDataset(SplitDataset):
    """``<ROOT>/toyworld/<folder>/images/<class>/`` and ``split_zhou_<NAME>.json``; nothing to build a
    split from (the generator writes it), so a missing JSON is an error saying how to write the world."""

    image_subdir = "images"

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        spec = dataset_specs()[cls.__name__]
        cls.dataset_dir = f"{WORLD_FOLDER}/{spec.folder}"
        cls.split_name = spec.name
        cls.contents = (
            "images/<class>/<class>_<n>.png",
            f"split_zhou_{spec.name}.json  (both written by: python -m vlprompt.toyworld --root DATASET.ROOT)",
        )

    def read_raw_split(self) -> tuple[list, list, list]:
        raise self.layout_error(
            f'split file "{self.split_path}" not found; write the toy world with: '
            f"python -m vlprompt.toyworld --root {self.root}"
        )


@DATASET_REGISTRY.register()
class ToyWorld(ToyWorldDataset):
    """24 pretrained combinations, photo domain (the ImageNet analogue)."""


@DATASET_REGISTRY.register()
class ToyWorldSketch(ToyWorldDataset):
    """The same classes as edge drawings (the ImageNet-Sketch analogue)."""


@DATASET_REGISTRY.register()
class ToyWorldR(ToyWorldDataset):
    """The same classes with an altered palette and cartoon style (the ImageNet-R analogue)."""


@DATASET_REGISTRY.register()
class ToyWorldA(ToyWorldDataset):
    """The same classes as hard crops among clutter (the ImageNet-A analogue)."""


@DATASET_REGISTRY.register()
class ToyWorldNovel(ToyWorldDataset):
    """Base = the 24 pretrained classes (labels 0-23), new = 24 combinations held out of pretraining."""


@DATASET_REGISTRY.register()
class ToyWorldPatterns(ToyWorldDataset):
    """Four classes named by their pattern alone ("striped")."""
