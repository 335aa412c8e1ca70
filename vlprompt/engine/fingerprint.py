"""Run fingerprints: the settings that change what a run computes, and how two runs differ in them.

One definition serves two guards: a resume refuses a checkpoint whose run had other settings, and a
results table averages only runs that agree on everything but the seed. Settings are every config key
except those that only say where a run writes, how fast it loads data or how often it prints
(:data:`NON_RESULT_KEYS`), and except the keys of other methods' ``TRAINER.<METHOD>`` sections; a
caller adds what the config cannot say (the CLIP weights' hash, the source of an initialisation) as
extras. Old run records are read the same way, from the config they store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from vlprompt.engine.config import VOLATILE_KEYS

__all__ = [
    "NON_RESULT_KEYS",
    "SEED_KEY",
    "describe_differences",
    "differing_keys",
    "fingerprint",
    "method_section",
    "result_settings",
    "without_keys",
]

SEED_KEY = "SEED"
# Keys that change where a run writes, how fast it runs or what it prints, never what it computes.
# Prefix matches: "TEST.PER_CLASS_RESULT" drops that key, "TRAINER.TPT.SHARD" that key only.
NON_RESULT_KEYS: tuple[str, ...] = (
    *VOLATILE_KEYS,
    "VERBOSE",
    "USE_CUDA",
    "DATALOADER.TEST.BATCH_SIZE",
    "TRAIN.PRINT_FREQ",
    "TRAIN.CHECKPOINT_FREQ",
    "TEST.PER_CLASS_RESULT",
    "TEST.COMPUTE_CMAT",
    "TRAINER.COCOOP.MAX_PROMPTS",  # chunking of an exact computation
    "TRAINER.TPT.BATCH_IMAGES",  # independent prompts per image: same predictions
    "TRAINER.TPT.SHARD",
    "TRAINER.TPT.PRINT_FREQ",
    "MODEL.BACKBONE.WEIGHTS",  # where the weights file is; its content counts (the weights_sha256 extra)
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, tuple):
        node = list(node)
    return {prefix[:-1]: node}


def method_section(trainer_name: str) -> str:
    """The ``TRAINER.<SECTION>`` holding a trainer's own keys: its class's ``CONFIG_SECTION`` when it
    declares one (``LinearProbeCLIP`` → ``LINEAR_PROBE``), else its name in capitals (``CoOp`` → ``COOP``)."""
    from vlprompt.engine.registry import TRAINER_REGISTRY

    if trainer_name in TRAINER_REGISTRY:
        section = getattr(TRAINER_REGISTRY.get(trainer_name), "CONFIG_SECTION", None)
        if section:
            return section
    return trainer_name.upper()


def _dropped(key: str, exclude: Iterable[str]) -> bool:
    return any(key == gone or key.startswith(gone + ".") for gone in exclude)


def without_keys(settings: Mapping[str, Any], exclude: Iterable[str]) -> dict[str, Any]:
    """``settings`` without the keys ``exclude`` names (a key, or a prefix: ``OPTIM`` drops ``OPTIM.*``)."""
    exclude = tuple(exclude)
    return {key: value for key, value in settings.items() if not _dropped(key, exclude)}


def result_settings(cfg: Mapping, extras: Mapping[str, Any] | None = None,
                    exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{dotted key: value}`` of every setting of ``cfg`` (a config or the dict a run record stores)
    that changes results, plus ``extras`` (e.g. ``{"weights_sha256": ...}``), minus ``exclude``."""
    flat = _flatten(cfg)
    own = f"TRAINER.{method_section(str(flat.get('TRAINER.NAME', '')))}."
    exclude = (*NON_RESULT_KEYS, *exclude)
    settings = {
        key: value for key, value in flat.items()
        if not _dropped(key, exclude) and (not key.startswith("TRAINER.") or key == "TRAINER.NAME"
                                           or key.startswith(own))
    }
    for key, value in (extras or {}).items():
        settings[key] = _flatten(value) if isinstance(value, Mapping) else value
    return dict(sorted(settings.items()))


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short, stable hash of ``settings`` (16 hex digits of the sha256 of their sorted JSON)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def differing_keys(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, first value, second value)`` for every key whose values differ (``None`` when absent)."""
    keys = sorted(set(first) | set(second))
    return [(k, first.get(k), second.get(k)) for k in keys if first.get(k) != second.get(k)]


def describe_differences(first: Mapping[str, Any], second: Mapping[str, Any], *,
                         first_name: str = "before", second_name: str = "now", limit: int = 12) -> str:
    """``KEY: before X, now Y`` lines for the settings that differ (at most ``limit``, then a count)."""
    rows = differing_keys(first, second)
    lines = [f"{key}: {first_name} {a!r}, {second_name} {b!r}" for key, a, b in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return "\n".join(lines)
