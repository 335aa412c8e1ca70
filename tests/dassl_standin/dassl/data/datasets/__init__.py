"""Dassl's dataset registry (a separate instance from vlprompt's) and base classes."""

from vlprompt.engine.data import DatasetBase, Datum  # noqa: F401
from vlprompt.engine.registry import Registry

DATASET_REGISTRY = Registry("DATASET")
