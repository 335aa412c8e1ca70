"""Backbone families: one module per family (its weights, model building and :class:`ClipAdapter`).
The bundled families (OpenAI's ``clip`` and ``open_clip``) register on first use (:data:`BUNDLED_FAMILIES`)."""

from vlprompt.modeling.backbones.base import *
