"""Test-time evaluation: the harness every test-time method runs on (``harness.py``: datasets, views, the
per-image loop, resumable and shardable prediction logs), and TPT's pieces (confidence selection and the
entropy objective, the tuning loop on cached features, initial contexts from words or checkpoints). TPT
itself (``trainers/tpt.py``) is its method on the harness."""

from vlprompt.tta.objective import marginal_entropy, num_selected, select_confident, view_entropy
from vlprompt.tta.sources import (
    CHECKPOINT_KINDS,
    ContextSource,
    LearnedContext,
    UnknownCheckpointError,
    WordsContext,
    context_from_checkpoint,
    detect_checkpoint_kind,
    register_checkpoint_kind,
)
from vlprompt.tta.tuner import PromptTuner, TPTSettings, TuneResult, encode_views
from vlprompt.tta.views import ViewMaker, resolve_aug

__all__ = [
    "CHECKPOINT_KINDS",
    "ContextSource",
    "LearnedContext",
    "PromptTuner",
    "TPTSettings",
    "TuneResult",
    "UnknownCheckpointError",
    "ViewMaker",
    "WordsContext",
    "context_from_checkpoint",
    "detect_checkpoint_kind",
    "encode_views",
    "marginal_entropy",
    "num_selected",
    "register_checkpoint_kind",
    "resolve_aug",
    "select_confident",
    "view_entropy",
]
