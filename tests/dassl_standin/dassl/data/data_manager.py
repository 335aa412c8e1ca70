"""Dassl's ``dassl.data.data_manager``: the data manager and its loader builder."""

from vlprompt.engine.data import build_data_loader  # noqa: F401

from . import DataManager, DatasetWrapper  # noqa: F401
