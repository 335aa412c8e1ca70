"""Dassl's data manager: looks datasets up in the stand-in's own registry, and, like Dassl's, keeps no
transforms or vlprompt-only bookkeeping as attributes (so trainers cannot rely on them in Dassl mode)."""

from vlprompt.engine.data import DataManager as _DataManager
from vlprompt.engine.data import DatasetWrapper  # noqa: F401

from .datasets import DATASET_REGISTRY


class DataManager(_DataManager):
    dataset_registry = DATASET_REGISTRY

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None):
        super().__init__(cfg, custom_tfm_train, custom_tfm_test, dataset_wrapper)
        for name in ("tfm_train", "tfm_test"):
            self.__dict__.pop(name, None)
