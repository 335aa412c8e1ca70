"""Backbone families: one module per family (its weights, model building and :class:`ClipAdapter`).
The bundled families (OpenAI's ``clip`` and ``open_clip``) register on first use (:data:`BUNDLED_FAMILIES`)."""

from vlprompt.modeling.backbones.base import (
    FAMILIES,
    BackboneFamily,
    BlockParts,
    ClipAdapter,
    Preprocess,
    Tokenizer,
    WeightsInfo,
    adapter_for,
    family_for_name,
    register_family,
)

__all__ = [
    "FAMILIES",
    "BackboneFamily",
    "BlockParts",
    "ClipAdapter",
    "Preprocess",
    "Tokenizer",
    "WeightsInfo",
    "adapter_for",
    "family_for_name",
    "register_family",
]
