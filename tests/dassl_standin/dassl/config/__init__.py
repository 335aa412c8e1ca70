"""Dassl's defaults, without the keys vlprompt adds (as the real Dassl lacks them)."""

from vlprompt.engine.config import get_cfg_default as _ours


def get_cfg_default():
    cfg = _ours()
    del cfg.DATASET["SUBSAMPLE_CLASSES"]
    del cfg.DATALOADER["SKIP_CORRUPT_IMAGES"]
    return cfg
