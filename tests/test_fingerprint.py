"""Run fingerprints: which settings count, and how differences are reported."""

from __future__ import annotations

from vlprompt.cli import register_plugins
from vlprompt.compat import get_cfg_default
from vlprompt.engine.config import extend_cfg
from vlprompt.engine.fingerprint import describe_differences, fingerprint, method_section, result_settings


def _cfg(**changes):
    register_plugins()
    cfg = extend_cfg(get_cfg_default())
    cfg.TRAINER.NAME = "CoOp"
    for key, value in changes.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def test_where_and_how_fast_do_not_count():
    base = fingerprint(result_settings(_cfg()))
    for change in ({"OUTPUT_DIR": "/elsewhere"}, {"DATASET__ROOT": "/data2"}, {"DATALOADER__NUM_WORKERS": 8},
                   {"TRAIN__PRINT_FREQ": 1}, {"DATALOADER__TEST__BATCH_SIZE": 7}, {"USE_CUDA": False}):
        assert fingerprint(result_settings(_cfg(**change))) == base, change


def test_results_settings_count():
    base = result_settings(_cfg())
    for change in ({"SEED": 3}, {"OPTIM__LR": 0.5}, {"OPTIM__MAX_EPOCH": 5}, {"DATASET__NUM_SHOTS": 4},
                   {"MODEL__BACKBONE__NAME": "RN50"}, {"TRAINER__COOP__N_CTX": 4},
                   {"DATASET__SUBSAMPLE_CLASSES": "base"}, {"INPUT__SIZE": (32, 32)}):
        assert fingerprint(result_settings(_cfg(**change))) != fingerprint(base), change


def test_only_the_running_methods_keys_count():
    coop = fingerprint(result_settings(_cfg()))
    assert fingerprint(result_settings(_cfg(TRAINER__COCOOP__N_CTX=9))) == coop
    assert fingerprint(result_settings(_cfg(TRAINER__TPT__STEPS=9))) == coop
    assert method_section("LinearProbeCLIP") == "LINEAR_PROBE"
    assert method_section("CoCoOp") == "COCOOP"


def test_extras_count_and_stored_configs_read_the_same():
    cfg = _cfg()
    assert fingerprint(result_settings(cfg, {"weights_sha256": "ab"})) != fingerprint(result_settings(cfg))
    import json
    stored = json.loads(json.dumps(cfg))  # as run.json keeps it: tuples became lists
    assert result_settings(stored) == result_settings(cfg)


def test_differences_are_named():
    text = describe_differences(result_settings(_cfg(SEED=1)), result_settings(_cfg(SEED=2, OPTIM__LR=0.1)))
    assert text.splitlines() == ["OPTIM.LR: before 0.0003, now 0.1", "SEED: before 1, now 2"]
