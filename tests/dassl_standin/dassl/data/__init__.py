"""Dassl's data manager: looks datasets up in the stand-in's own registry."""

from vlprompt.engine.data import DataManager as _DataManager
from vlprompt.engine.data import DatasetWrapper  # noqa: F401

from .datasets import DATASET_REGISTRY


class DataManager(_DataManager):
    dataset_registry = DATASET_REGISTRY
