"""Everything about CLIP-like models, behind one interface: backbone families and their adapters
(``backbones/``), :func:`create_clip` (``factory``), prompt learners (``prompts``), the prompt-aware text
encoder (``text_encoder``), scoring (``heads``) and prompt checkpoints (``prompt_checkpoints``).
Trainers import from here; only ``backbones/`` knows a family's internals."""

from vlprompt.modeling.backbones.base import ClipAdapter, Preprocess, Tokenizer, adapter_for
from vlprompt.modeling.factory import (
    PRECISIONS,
    ClipBundle,
    apply_precision,
    check_input_size,
    create_clip,
    load_clip,
    load_clip_cached,
    resolve_weights,
    weights_fingerprint_extras,
)
from vlprompt.modeling.heads import clip_logits, normalize, scaled_logits
from vlprompt.modeling.prompts import (
    CLASS_TOKEN_POSITIONS,
    PromptLearner,
    build_text_classifier,
    classname_text,
    context_words,
)
from vlprompt.modeling.text_encoder import PromptTextEncoder

__all__ = [
    "CLASS_TOKEN_POSITIONS",
    "PRECISIONS",
    "ClipAdapter",
    "ClipBundle",
    "Preprocess",
    "PromptLearner",
    "PromptTextEncoder",
    "Tokenizer",
    "adapter_for",
    "apply_precision",
    "build_text_classifier",
    "check_input_size",
    "classname_text",
    "clip_logits",
    "context_words",
    "create_clip",
    "load_clip",
    "load_clip_cached",
    "normalize",
    "resolve_weights",
    "scaled_logits",
    "weights_fingerprint_extras",
]
