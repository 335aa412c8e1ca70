"""Bundled datasets; importing this package (as ``vlprompt.datasets``) registers each one in
``DATASET_REGISTRY``."""

from . import (  # noqa: F401
    caltech101,
    dtd,
    eurosat,
    fgvc_aircraft,
    food101,
    imagenet,
    imagenet_a,
    imagenet_r,
    imagenet_sketch,
    imagenetv2,
    oxford_flowers,
    oxford_pets,
    stanford_cars,
    sun397,
    toyworld,
    ucf101,
)
