"""Dassl's ``dassl.data.transforms``."""

from vlprompt.engine.data import build_transform  # noqa: F401
