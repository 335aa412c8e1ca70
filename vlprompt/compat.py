"""The one place trainers and datasets import the engine from: built-in, or a real Dassl.

``VLPROMPT_ENGINE`` selects it: ``builtin`` (default) or ``dassl``. With ``dassl`` our classes subclass
Dassl's and register into Dassl's registries, so Dassl's ``build_trainer`` finds them; checkpoint
loading, resume and the optimiser/scheduler builders stay ours (Dassl's crash on torch >= 2.7 and need
``weights_only=False``), which :class:`vlprompt.engine.trainer.TrainerBase` methods provide.
"""

from __future__ import annotations

import os

from vlprompt.engine import trainer as _builtin_trainer

ENGINE_ENV = "VLPROMPT_ENGINE"


def selected_engine() -> str:
    """``"builtin"`` or ``"dassl"`` from ``VLPROMPT_ENGINE``; anything else is an error naming the value."""
    engine = os.environ.get(ENGINE_ENV, "builtin").strip().lower() or "builtin"
    if engine not in ("builtin", "dassl"):
        raise ValueError(f'{ENGINE_ENV}="{engine}" is not an engine; use "builtin" (default) or "dassl"')
    return engine


ENGINE = selected_engine()

# Methods taken from our engine even when the base class is Dassl's: safe checkpoint loading and exact
# resume (Dassl's loader needs weights_only=False; its base load_model crashes on val_result=None).
_OWN_METHODS = ("save_model", "resume_model_if_exist", "load_model", "_latest_checkpoint")

if ENGINE == "dassl":
    try:
        import dassl.data.datasets as _dassl_datasets
        import dassl.engine as _dassl_engine
        from dassl.config import get_cfg_default as _dassl_cfg_default  # noqa: F401 - checks the install
    except ImportError as err:
        raise ImportError(
            f"{ENGINE_ENV}=dassl but Dassl cannot be imported ({err}). Install Dassl.pytorch "
            f"(python setup.py develop in its checkout) or unset {ENGINE_ENV} to use the built-in engine."
        ) from err

    TRAINER_REGISTRY = _dassl_engine.TRAINER_REGISTRY
    DATASET_REGISTRY = _dassl_datasets.DATASET_REGISTRY
    Datum = _dassl_datasets.Datum
    DatasetBase = _dassl_datasets.DatasetBase
    build_trainer = _dassl_engine.build_trainer
    TrainerX = type(
        "TrainerX",
        (_dassl_engine.TrainerX,),
        {name: getattr(_builtin_trainer.TrainerBase, name) for name in _OWN_METHODS},
    )
else:
    from vlprompt.engine.data import DatasetBase, Datum
    from vlprompt.engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY
    from vlprompt.engine.trainer import TrainerX, build_trainer

__all__ = ["DATASET_REGISTRY", "ENGINE", "TRAINER_REGISTRY", "DatasetBase", "Datum", "TrainerX", "build_trainer"]
