"""Configuration: Dassl 0.6.3's default keys, a hook for method-specific keys, and merges with clear errors.

A run's config is built as in CoOp's ``train.py``: ``get_cfg_default()`` → ``extend_cfg`` (keys declared by
the imported trainer modules) → dataset yaml → method yaml → command-line flags → ``KEY VALUE`` opts.
yacs rejects unknown keys and type changes; the wrappers here turn its terse errors into ones that name
the file, the key, and the likely fix.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
from ast import literal_eval
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode

from vlprompt.errors import UserError

CN = CfgNode

__all__ = [
    "CN",
    "VOLATILE_KEYS",
    "CfgNode",
    "ConfigError",
    "ConfigFileNotFoundError",
    "add_missing_keys",
    "config_hash",
    "extend_cfg",
    "get_cfg_default",
    "merge_from_file",
    "merge_from_list",
    "register_cfg_extension",
    "registered_cfg_extensions",
]


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names the file/key and the fix."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file path that does not exist (also catchable as ``FileNotFoundError``)."""


# ---------------------------------------------------------------------------------------------------------
# Defaults. Keys and values are those of Dassl 0.6.3 (dassl/config/defaults.py) so that every yaml, script
# and ``KEY VALUE`` override written for CoOp-on-Dassl is accepted unchanged; two keys are added (marked).
# ---------------------------------------------------------------------------------------------------------

DASSL_DEFAULTS: dict[str, Any] = {
    "VERSION": 1,
    "OUTPUT_DIR": "./output",  # where log.txt, tensorboard/ and checkpoints go
    "RESUME": "",  # directory of an earlier run to resume from
    "SEED": -1,  # < 0: no fixed seed
    "USE_CUDA": True,
    "VERBOSE": True,
    "INPUT": {
        "SIZE": (224, 224),
        "INTERPOLATION": "bilinear",
        "TRANSFORMS": (),  # names understood by the transform builder, e.g. "random_resized_crop"
        "NO_TRANSFORM": False,
        "PIXEL_MEAN": [0.485, 0.456, 0.406],  # ImageNet statistics; CLIP yamls override them
        "PIXEL_STD": [0.229, 0.224, 0.225],
        "CROP_PADDING": 4,
        "RRCROP_SCALE": (0.08, 1.0),
        "CUTOUT_N": 1,
        "CUTOUT_LEN": 16,
        "GN_MEAN": 0.0,  # gaussian noise
        "GN_STD": 0.15,
        "RANDAUGMENT_N": 2,
        "RANDAUGMENT_M": 10,
        "COLORJITTER_B": 0.4,
        "COLORJITTER_C": 0.4,
        "COLORJITTER_S": 0.4,
        "COLORJITTER_H": 0.1,
        "RGS_P": 0.2,  # random grayscale probability
        "GB_P": 0.5,  # gaussian blur probability
        "GB_K": 21,  # gaussian blur kernel size (odd)
    },
    "DATASET": {
        "ROOT": "",
        "NAME": "",
        "SOURCE_DOMAINS": (),
        "TARGET_DOMAINS": (),
        "NUM_LABELED": -1,
        "NUM_SHOTS": -1,  # < 1: use the full training split
        "VAL_PERCENT": 0.1,
        "STL10_FOLD": -1,
        "CIFAR_C_TYPE": "",
        "CIFAR_C_LEVEL": 1,
        "ALL_AS_UNLABELED": False,
        "SUBSAMPLE_CLASSES": "all",  # added (CoOp plugin key): all | base | new
    },
    "DATALOADER": {
        "NUM_WORKERS": 4,
        "K_TRANSFORMS": 1,
        "RETURN_IMG0": False,
        "SKIP_CORRUPT_IMAGES": False,  # added (vlprompt): skip unreadable images instead of failing
        "TRAIN_X": {"SAMPLER": "RandomSampler", "BATCH_SIZE": 32, "N_DOMAIN": 0, "N_INS": 16},
        "TRAIN_U": {
            "SAME_AS_X": True,
            "SAMPLER": "RandomSampler",
            "BATCH_SIZE": 32,
            "N_DOMAIN": 0,
            "N_INS": 16,
        },
        "TEST": {"SAMPLER": "SequentialSampler", "BATCH_SIZE": 32},
    },
    "MODEL": {
        "INIT_WEIGHTS": "",
        "BACKBONE": {"NAME": "", "PRETRAINED": True},
        "HEAD": {"NAME": "", "HIDDEN_LAYERS": (), "ACTIVATION": "relu", "BN": True, "DROPOUT": 0.0},
    },
    "OPTIM": {
        "NAME": "adam",
        "LR": 0.0003,
        "WEIGHT_DECAY": 5e-4,
        "MOMENTUM": 0.9,
        "SGD_DAMPNING": 0,  # sic: Dassl's spelling
        "SGD_NESTEROV": False,
        "RMSPROP_ALPHA": 0.99,
        "ADAM_BETA1": 0.9,
        "ADAM_BETA2": 0.999,
        "STAGED_LR": False,
        "NEW_LAYERS": (),
        "BASE_LR_MULT": 0.1,
        "LR_SCHEDULER": "single_step",
        "STEPSIZE": (-1,),
        "GAMMA": 0.1,
        "MAX_EPOCH": 10,
        "WARMUP_EPOCH": -1,  # > 0 enables warm-up
        "WARMUP_TYPE": "linear",  # linear | constant
        "WARMUP_CONS_LR": 1e-5,
        "WARMUP_MIN_LR": 1e-5,
        "WARMUP_RECOUNT": True,
    },
    "TRAIN": {"CHECKPOINT_FREQ": 0, "PRINT_FREQ": 10, "COUNT_ITER": "train_x"},
    "TEST": {
        "EVALUATOR": "Classification",
        "PER_CLASS_RESULT": False,
        "COMPUTE_CMAT": False,
        "NO_TEST": False,
        "SPLIT": "test",
        "FINAL_MODEL": "last_step",  # last_step | best_val
    },
    "TRAINER": {
        "NAME": "",
        # Dassl's own domain-adaptation / generalisation / semi-supervised trainers. Kept so that configs
        # and dumps match Dassl's key set exactly; none of these methods ships here.
        "MCD": {"N_STEP_F": 4},
        "MME": {"LMDA": 0.1},
        "CDAC": {
            "CLASS_LR_MULTI": 10,
            "RAMPUP_COEF": 30,
            "RAMPUP_ITRS": 1000,
            "TOPK_MATCH": 5,
            "P_THRESH": 0.95,
            "STRONG_TRANSFORMS": (),
        },
        "SE": {"EMA_ALPHA": 0.999, "CONF_THRE": 0.95, "RAMPUP": 300},
        "M3SDA": {"LMDA": 0.5, "N_STEP_F": 4},
        "DAEL": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
        "CROSSGRAD": {"EPS_F": 1.0, "EPS_D": 1.0, "ALPHA_F": 0.5, "ALPHA_D": 0.5},
        "DDAIG": {
            "G_ARCH": "",
            "LMDA": 0.3,
            "CLAMP": False,
            "CLAMP_MIN": -1.0,
            "CLAMP_MAX": 1.0,
            "WARMUP": 0,
            "ALPHA": 0.5,
        },
        "DAELDG": {"WEIGHT_U": 0.5, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
        "DOMAINMIX": {"TYPE": "crossdomain", "ALPHA": 1.0, "BETA": 1.0},
        "ENTMIN": {"LMDA": 1e-3},
        "MEANTEACHER": {"WEIGHT_U": 1.0, "EMA_ALPHA": 0.999, "RAMPUP": 5},
        "MIXMATCH": {"WEIGHT_U": 100.0, "TEMP": 2.0, "MIXUP_BETA": 0.75, "RAMPUP": 20000},
        "FIXMATCH": {"WEIGHT_U": 1.0, "CONF_THRE": 0.95, "STRONG_TRANSFORMS": ()},
    },
}


def get_cfg_default() -> CfgNode:
    """A fresh, mutable config holding Dassl 0.6.3's defaults (plus ``DATASET.SUBSAMPLE_CLASSES`` and
    ``DATALOADER.SKIP_CORRUPT_IMAGES``); method keys are added afterwards by ``extend_cfg``."""
    return CfgNode(copy.deepcopy(DASSL_DEFAULTS))


def add_missing_keys(cfg: CfgNode, defaults: CfgNode) -> CfgNode:
    """Copy into ``cfg`` every key of ``defaults`` it lacks (recursively); existing values are kept.

    Used in Dassl plugin mode, where Dassl's own defaults lack the few keys vlprompt adds.
    """
    for name, value in defaults.items():
        if name not in cfg:
            cfg[name] = copy.deepcopy(value)
        elif isinstance(value, CfgNode) and isinstance(cfg[name], CfgNode):
            add_missing_keys(cfg[name], value)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Extension hook: each trainer module declares its own keys; the engine never names a method.
# ---------------------------------------------------------------------------------------------------------

CfgExtension = Callable[[CfgNode], None]

# Keyed by (module, qualname) so that re-importing a trainer module (reload, or the same file reached as
# ``trainers.coop`` and ``vlprompt.trainers.coop``) replaces its extension instead of adding a second copy.
_EXTENSIONS: dict[tuple[str, str], CfgExtension] = {}

# Name of the private attribute (in CfgNode.__dict__, so never a config key) recording the extensions
# already applied to a config: calling extend_cfg twice must not reset values merged in between.
_APPLIED_ATTR = "_vlprompt_applied_cfg_extensions"


def _extension_key(fn: CfgExtension) -> tuple[str, str]:
    module = getattr(fn, "__module__", None) or ""
    # Strip the package alias so both import paths of one trainer file give the same key.
    module = module.removeprefix("vlprompt.")
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        # Lambdas and closures share qualnames across distinct functions; identity is the only safe key.
        return (module, f"{qualname}@{id(fn)}")
    return (module, qualname)


def register_cfg_extension(fn: CfgExtension) -> CfgExtension:
    """Register ``fn(cfg)`` that adds a method's keys (e.g. ``cfg.TRAINER.COOP = CN()``); usable as a
    decorator. Registering the same function again keeps one entry at its original position."""
    if not callable(fn):
        raise TypeError(f"register_cfg_extension expects a callable taking the config, got {fn!r}")
    _EXTENSIONS[_extension_key(fn)] = fn
    return fn


def registered_cfg_extensions() -> list[CfgExtension]:
    """The registered extensions in registration order (for inspection and tests)."""
    return list(_EXTENSIONS.values())


def extend_cfg(cfg: CfgNode) -> CfgNode:
    """Apply every registered extension to ``cfg`` once, in registration order, and return ``cfg``.

    Extensions already applied to this config are skipped, so a second call only adds keys of trainer
    modules imported since and never resets values that were merged in between.
    """
    if cfg.is_frozen():
        raise ConfigError("extend_cfg: the config is frozen; call it before cfg.freeze() (or cfg.defrost())")
    applied: set[tuple[str, str]] = cfg.__dict__.setdefault(_APPLIED_ATTR, set())
    for key, fn in list(_EXTENSIONS.items()):
        if key in applied:
            continue
        fn(cfg)
        applied.add(key)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Merging with readable errors
# ---------------------------------------------------------------------------------------------------------

_CLI_SOURCE = "command-line opts"


def _all_keys(node: CfgNode, prefix: str = "") -> list[str]:
    """Every dotted key (sections and leaves) of ``node``."""
    keys = []
    for name, value in node.items():
        full = f"{prefix}{name}"
        keys.append(full)
        if isinstance(value, CfgNode):
            keys.extend(_all_keys(value, full + "."))
    return keys


def _suggest(cfg: CfgNode, unknown: str, limit: int = 3) -> list[str]:
    """Closest valid dotted keys to ``unknown``: same key in another case or section first, then difflib."""
    candidates = _all_keys(cfg)
    by_upper = {c.upper(): c for c in candidates}
    found: list[str] = []
    if unknown.upper() in by_upper:
        found.append(by_upper[unknown.upper()])
    # A right leaf name in the wrong section (TRAIN.MAX_EPOCH for OPTIM.MAX_EPOCH) is a common slip.
    leaf = unknown.rsplit(".", 1)[-1].upper()
    found.extend(c for c in candidates if c.rsplit(".", 1)[-1].upper() == leaf)
    found.extend(by_upper[m] for m in difflib.get_close_matches(unknown.upper(), list(by_upper), n=limit))
    return list(dict.fromkeys(found))[:limit]


def _unknown_key_message(cfg: CfgNode, key: str, source: str, missing: str | None = None) -> str:
    """``key`` is the key as written; ``missing`` its first part that does not exist, when shorter."""
    message = f"unknown config key {key} (in {source})"
    if missing and missing != key:
        message = f"unknown config key {key} (in {source}): there is no section {missing}"
    suggestions = _suggest(cfg, key)
    if suggestions:
        message += "; did you mean " + " or ".join(suggestions) + "?"
    if key.upper().startswith("TRAINER.") and not key.upper().startswith("TRAINER.NAME"):
        message += (
            " Method keys under TRAINER.<METHOD> are declared by the trainer module through"
            " register_cfg_extension; make sure it is imported (import vlprompt.trainers) before extend_cfg."
        )
    return message


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _type_hint(expected: Any, given: Any) -> str:
    """A short fix for the usual type slips (int for float, unquoted strings, true/false)."""
    if isinstance(expected, float) and isinstance(given, int) and not isinstance(given, bool):
        return f" Write it as a float, e.g. {float(given)!r}."
    if isinstance(expected, bool) and isinstance(given, str) and given.lower() in ("true", "false"):
        return " Booleans are written True or False."
    if isinstance(expected, str) and not isinstance(given, str):
        return f" Quote it to pass a string, e.g. \"'{given}'\"."
    if isinstance(expected, (int, float)) and isinstance(given, str):
        return " The value could not be read as a number."
    return ""


def _types_compatible(expected: Any, given: Any) -> bool:
    """yacs 0.1.8's rule: same type, either side None, or list <-> tuple."""
    if type(expected) is type(given) or expected is None or given is None:
        return True
    return isinstance(expected, (list, tuple)) and isinstance(given, (list, tuple))


def _type_error_message(key: str, expected: Any, given: Any, source: str) -> str:
    if isinstance(expected, CfgNode):
        return f"config key {key} (in {source}) is a section; it cannot be set to the value {given!r}"
    if isinstance(given, dict):
        return (
            f"config key {key} (in {source}) expects {_type_name(expected)} (default {expected!r}), "
            f"got a section with keys {sorted(given.keys())}"
        )
    return (
        f"wrong type for config key {key} (in {source}): expected {_type_name(expected)} "
        f"(current value {expected!r}), got {_type_name(given)} {given!r}." + _type_hint(expected, given)
    )


def _decode(value: Any) -> Any:
    """yacs' value decoding: strings are literal-evaluated when possible (dicts, i.e. sections, stay)."""
    if not isinstance(value, str):
        return value
    try:
        return literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _check_tree(cfg: CfgNode, node: CfgNode, new: dict, prefix: str, source: str, problems: list[str]) -> None:
    """Collect every unknown key and type mismatch of ``new`` against ``node`` (no changes are made)."""
    for name, raw in new.items():
        key = f"{prefix}{name}"
        if name not in node:
            if not node.is_new_allowed():
                problems.append(_unknown_key_message(cfg, key, source))
            continue
        current, value = node[name], _decode(raw)
        if isinstance(current, CfgNode) and isinstance(value, dict):
            _check_tree(cfg, current, value, key + ".", source, problems)
        elif isinstance(current, CfgNode) or isinstance(value, dict) or not _types_compatible(current, value):
            problems.append(_type_error_message(key, current, value, source))


def _raise_problems(problems: Sequence[str]) -> None:
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} config errors:\n  - " + "\n  - ".join(problems))


def _read_yaml(path: str, chain: tuple[str, ...]) -> dict:
    """Load one yaml file, resolving ``_BASE_`` (a path, or list of paths, relative to the file) first."""
    if not os.path.isfile(path):
        where = f" (referenced as _BASE_ by {chain[-1]})" if chain else ""
        raise ConfigFileNotFoundError(
            f"config file not found: {path}{where}; check the path (relative paths are resolved "
            f"from {os.getcwd()})"
        )
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"_BASE_ cycle in config files: {' -> '.join(chain + (real,))}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must contain a mapping of KEY: value at top level, got {type(data).__name__}"
        )
    bases = data.pop("_BASE_", None)
    if bases is None:
        return data
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = os.path.join(os.path.dirname(path), os.path.expanduser(str(base)))
        _deep_update(merged, _read_yaml(base_path, chain + (real,)))
    _deep_update(merged, data)
    return merged


def _deep_update(target: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _ensure_mutable(cfg: CfgNode, what: str) -> None:
    if cfg.is_frozen():
        raise ConfigError(f"cannot merge {what}: the config is frozen (call cfg.defrost() first)")


def merge_from_file(cfg: CfgNode, path: str | os.PathLike) -> CfgNode:
    """Merge a yaml file into ``cfg`` (yacs semantics, ``_BASE_`` supported) and return ``cfg``.

    Nothing is changed if the file has an unknown key or a value of the wrong type; the ConfigError lists
    every such key with the closest valid keys / expected type.
    """
    path = os.fspath(path)
    _ensure_mutable(cfg, f"config file {path}")
    data = _read_yaml(path, ())
    problems: list[str] = []
    _check_tree(cfg, cfg, data, "", path, problems)
    _raise_problems(problems)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError, AssertionError) as error:  # a rule yacs has and the check above lacks
        raise ConfigError(f"cannot merge config file {path}: {error}") from error
    return cfg


def merge_from_list(cfg: CfgNode, opts: Iterable[Any], source: str = _CLI_SOURCE) -> CfgNode:
    """Merge ``KEY VALUE`` pairs (strings are literal-evaluated, as in yacs) into ``cfg`` and return it.

    All pairs are checked before any is applied, so a bad override leaves ``cfg`` unchanged.
    """
    opts = list(opts)
    _ensure_mutable(cfg, source)
    if len(opts) % 2:
        raise ConfigError(
            f"{source} must be KEY VALUE pairs, but {opts[-1]!r} has no value (got {len(opts)} items: {opts})"
        )
    problems: list[str] = []
    for key, raw in zip(opts[0::2], opts[1::2]):
        if not isinstance(key, str):
            problems.append(f"config key {key!r} (in {source}) must be a dotted string such as OPTIM.LR")
            continue
        node, parts = cfg, key.split(".")
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[: depth + 1])
            if not isinstance(node, CfgNode):
                problems.append(f"config key {key} (in {source}): {'.'.join(parts[:depth])} is a value, "
                                "not a section")
                break
            if part not in node:
                problems.append(_unknown_key_message(cfg, key, source, missing=prefix))
                break
            node = node[part] if depth < len(parts) - 1 else node
        else:
            current, value = node[parts[-1]], _decode(raw)
            if isinstance(current, CfgNode) or isinstance(value, dict) or not _types_compatible(current, value):
                problems.append(_type_error_message(key, current, value, source))
    _raise_problems(problems)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as error:
        raise ConfigError(f"cannot merge {source}: {error}") from error
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Hashing for run records
# ---------------------------------------------------------------------------------------------------------

# Keys that change where a run writes or how fast it loads data, but not what it computes.
VOLATILE_KEYS: tuple[str, ...] = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "DATALOADER.NUM_WORKERS")


def _plain(value: Any) -> Any:
    """Nodes → dicts and tuples → lists, so the yaml dump is plain and independent of container type."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_hash(cfg: CfgNode, exclude: Iterable[str] = VOLATILE_KEYS) -> str:
    """First 12 hex digits of the sha256 of the key-sorted yaml dump of ``cfg`` without ``exclude``.

    Two runs with the same hash computed the same thing; output paths and worker counts do not count.
    """
    plain = _plain(cfg)
    for key in exclude:
        *parents, leaf = key.split(".")
        node = plain
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    text = yaml.safe_dump(plain, sort_keys=True, default_flow_style=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
