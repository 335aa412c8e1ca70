"""The one place trainers and datasets import the engine from: built-in, or a real Dassl (registries,
``TrainerX``, and the data side: ``DataManager``, ``build_data_loader``, ``build_transform``).

``VLPROMPT_ENGINE`` selects it: ``builtin`` (default) or ``dassl``. With ``dassl`` our trainers
subclass Dassl's ``TrainerX`` and everything registers into Dassl's registries, so Dassl's
``build_trainer`` and ``DataManager`` find them. Some parts stay ours in both modes because Dassl's
break on current PyTorch or lose information: checkpoint saving/loading and resume (Dassl's loader
needs ``weights_only=False``, its base ``load_model`` crashes on ``val_result=None``), ``test`` (it
keeps the final metrics for the run record), the optimiser/scheduler builders (Dassl's warm-up
scheduler crashes on torch >= 2.7), and ``Datum``/``DatasetBase``, which Dassl's data manager reads
through the same attributes as its own.
"""

from __future__ import annotations

import os

from vlprompt.engine import config as _config
from vlprompt.engine import trainer as _builtin_trainer
from vlprompt.engine.data import DatasetBase, Datum
from vlprompt.errors import UserValueError

ENGINE_ENV = "VLPROMPT_ENGINE"


def selected_engine() -> str:
    """``"builtin"`` or ``"dassl"`` from ``VLPROMPT_ENGINE``; anything else is an error naming the value."""
    engine = os.environ.get(ENGINE_ENV, "builtin").strip().lower() or "builtin"
    if engine not in ("builtin", "dassl"):
        raise UserValueError(f'{ENGINE_ENV}="{engine}" is not an engine; use "builtin" (default) or "dassl"')
    return engine


ENGINE = selected_engine()

# TrainerBase methods that replace Dassl's in plugin mode (see the module docstring).
OWN_TRAINER_METHODS = (
    "save_model", "resume_model_if_exist", "load_model", "_check_resume_settings", "test",
    "checkpoint_extras", "restore_checkpoint_extras", "run_settings", "fingerprint_extras",
    "interruption_hint",
)

if ENGINE == "dassl":
    try:
        import dassl.data.datasets as _dassl_datasets
        import dassl.engine as _dassl_engine
        from dassl.config import get_cfg_default as _dassl_cfg_default
    except ImportError as err:
        raise ImportError(
            f"{ENGINE_ENV}=dassl but Dassl cannot be imported ({err}). Install Dassl.pytorch "
            f"(python setup.py develop in its checkout) or unset {ENGINE_ENV} to use the built-in engine."
        ) from err

    from dassl.data import DataManager
    from dassl.data.data_manager import build_data_loader
    from dassl.data.transforms import build_transform

    TRAINER_REGISTRY = _dassl_engine.TRAINER_REGISTRY
    DATASET_REGISTRY = _dassl_datasets.DATASET_REGISTRY
    build_trainer = _dassl_engine.build_trainer
    TrainerX = type(
        "TrainerX",
        (_dassl_engine.TrainerX,),
        {
            "__doc__": "Dassl's TrainerX with vlprompt's checkpoint handling and test bookkeeping.",
            "test_results": None,
            **{name: getattr(_builtin_trainer.SimpleTrainer, name) for name in OWN_TRAINER_METHODS},
        },
    )

    def get_cfg_default():
        """Dassl's defaults, plus the keys vlprompt adds to them (e.g. DATASET.SUBSAMPLE_CLASSES)."""
        cfg = _dassl_cfg_default()
        _config.add_missing_keys(cfg, _config.get_cfg_default())
        return cfg
else:
    from vlprompt.engine.data import DataManager, build_data_loader, build_transform
    from vlprompt.engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY
    from vlprompt.engine.trainer import TrainerX, build_trainer

    get_cfg_default = _config.get_cfg_default

__all__ = [
    "DATASET_REGISTRY",
    "ENGINE",
    "TRAINER_REGISTRY",
    "DataManager",
    "DatasetBase",
    "Datum",
    "TrainerX",
    "build_data_loader",
    "build_trainer",
    "build_transform",
    "get_cfg_default",
]
