"""Bundled datasets; importing this package (as ``vlprompt.datasets``) registers each one in
``DATASET_REGISTRY``."""

from . import oxford_pets  # noqa: F401
