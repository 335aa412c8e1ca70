"""Which runs a table may average, and row names that say how the runs it keeps apart differ.

A table cell averages the seeds of one configuration only. A run's settings are
:func:`vlprompt.engine.fingerprint.result_settings` of the config it stored (its record's ``config``, or
the config its log printed) without the keys the table's columns stand for (the seed, the dataset, the
shots of the few-shot table, the classes of the base-to-new one), plus what a config cannot say:

- ``weights_sha256``: the CLIP weights' hash, when the record has ``weights``;
- an evaluation of a trained model (``--model-dir``) takes that run's settings (so it is grouped with
  the model it loaded, whatever that run's seed), plus its own settings where they differ
  (``eval.<KEY>``) and ``init.epoch`` when ``--load-epoch`` is not the last epoch;
- TPT adds where each test image starts: ``init.kind`` (``words``, ``coop``, ``cocoop``, ...) and, for a
  checkpoint, the run it came from (``init.from``: its folder, seed folders alike; ``init.run``: its
  settings) and ``init.file`` (``TRAINER.TPT.LOAD``'s file name, the path itself not counting).

Records without a config (schema 1) are compared by trainer, backbone, shots and subsample only, and the
tables say so. Runs whose settings differ in anything but the seed go to different rows, named by the
fewest differing settings that tell them apart (:func:`row_labels`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from itertools import combinations
from typing import Any

from vlprompt.engine.fingerprint import (
    SEED_KEY,
    TEST_TIME_SECTIONS,
    differing_keys,
    fingerprint,
    method_section,
    result_settings,
    without_keys,
)
from vlprompt.results.runs import Run, resolve_model_dir, runs_in_folder

# Keys no table compares: every table has a column per dataset (a test-time method's TEST_SETS only lists them).
COLUMN_KEYS = (SEED_KEY, "DATASET.NAME", *(f"TRAINER.{node}.TEST_SETS" for node in TEST_TIME_SECTIONS))
# A path, described by the init.* settings instead (so moving the output tree changes nothing).
REPLACED_KEYS = tuple(f"TRAINER.{node}.LOAD" for node in TEST_TIME_SECTIONS)
PARTIAL = "settings"  # present (as PARTIAL_VALUE) only in the settings of runs without a stored config
PARTIAL_VALUE = "no stored config"
WEIGHTS = "weights_sha256"
INIT_KIND, INIT_FROM, INIT_FILE, INIT_EPOCH, INIT_RUN = "init.kind", "init.from", "init.file", "init.epoch", "init.run"
EVAL_PREFIX = "eval."
# What only training reads: never a setting of a run that trains nothing (an evaluation, zero-shot CLIP, TPT).
TRAINING_ONLY = ("OPTIM", "TRAIN", "DATALOADER.TRAIN_X", "DATALOADER.TRAIN_U")
KIND_NAMES = {"words": "words", "coop": "CoOp ctx", "cocoop": "CoCoOp", "genpt": "GenPT"}
_SEED_FOLDER = re.compile(r"^seed[-_]?\d+$", re.IGNORECASE)
_MAX_DEPTH = 4  # evaluations of evaluations; also ends a model_dir that points at itself
_MAX_NAMED = 8  # differing settings a note names before "and N more"


def _register_trainers() -> None:
    """``result_settings`` keeps a trainer's own ``TRAINER.<SECTION>``, which its registration names."""
    from vlprompt.cli import register_plugins

    register_plugins()


def _config_value(config: Any, dotted: str) -> Any:
    node = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


class RunSettings:
    """The settings of runs as tables compare them (see the module docstring), computed once per run.

    ``runs`` are the runs at hand: the model an evaluation loaded is looked up among them first (then on
    disk, through ``model_dir`` as written or a trailing part of it, as ``resolve_model_dir`` finds it).
    """

    def __init__(self, runs: Iterable[Run]) -> None:
        _register_trainers()
        self._by_folder: dict[str, Run] = {}
        for run in runs:
            self._by_folder.setdefault(os.path.realpath(run.directory), run)
        folders = list(self._by_folder)
        if len(folders) > 1:
            self.root = os.path.commonpath(folders)
        else:
            self.root = os.path.dirname(folders[0]) if folders else ""
        self._cache: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
        self._on_disk: dict[str, Run | None] = {}
        self._partial: set[str] = set()  # run folders without a stored config
        self._unresolved: dict[str, str] = {}  # run folder -> the model path it loaded, not found

    def of(self, run: Run, columns: Sequence[str] = ()) -> dict[str, Any]:
        """``run``'s settings without :data:`COLUMN_KEYS` and ``columns`` (keys a table's columns stand for)."""
        return self._settings(run, tuple(columns), 0)

    def notes_for(self, runs: Iterable[Run]) -> list[str]:
        """What the tables should say about how ``runs`` were compared (no config, a model not found)."""
        folders = {run.directory for run in runs}
        notes = []
        partial = sorted(folders & self._partial)
        if partial:
            notes.append(f"{len(partial)} run(s) have no stored config (run.json of schema 1): they are compared by "
                         "trainer, backbone, shots and subsample only, so runs of other settings may share their "
                         f"cells (e.g. {partial[0]})")
        lost = sorted(folders & set(self._unresolved))
        if lost:
            notes.append(f"{len(lost)} run(s) loaded a model that was not found (e.g. {lost[0]} loaded "
                         f"{self._unresolved[lost[0]]}): they are grouped by that path, seed folders alike, not by "
                         "the settings of the run that trained it")
        return notes

    # ------------------------------------------------------------------------------------------ internals
    def _settings(self, run: Run, columns: tuple[str, ...], depth: int) -> dict[str, Any]:
        key = (os.path.realpath(run.directory), columns)
        if key not in self._cache:
            self._cache[key] = self._compute(run, columns, depth)
        return self._cache[key]

    def _own(self, run: Run, columns: tuple[str, ...]) -> dict[str, Any]:
        exclude = (*COLUMN_KEYS, *REPLACED_KEYS, *columns)
        extras: dict[str, Any] = {}
        weights = (run.record or {}).get("weights")
        if isinstance(weights, Mapping) and weights.get("sha256"):
            extras[WEIGHTS] = str(weights["sha256"])
        config = run.config
        if isinstance(config, Mapping) and config:
            trainer = config.get("TRAINER")
            if not isinstance(trainer, Mapping) or not trainer.get("NAME"):
                config = {**config, "TRAINER": {**(trainer if isinstance(trainer, Mapping) else {}),
                                                "NAME": run.trainer}}
            return result_settings(config, extras, exclude=exclude)
        self._partial.add(run.directory)
        known = {"TRAINER.NAME": run.trainer, "MODEL.BACKBONE.NAME": run.backbone, "DATASET.NUM_SHOTS": run.shots,
                 "DATASET.SUBSAMPLE_CLASSES": run.subsample, PARTIAL: PARTIAL_VALUE, **extras}
        known = {key: value for key, value in known.items() if value not in ("", None)}  # "" = not recorded
        return dict(sorted(without_keys(known, exclude).items()))

    def _compute(self, run: Run, columns: tuple[str, ...], depth: int) -> dict[str, Any]:
        own = self._own(run, columns)
        tpt = run.protocol == "tpt"
        if run.eval_only or tpt or run.protocol == "zeroshot" or run.trainer.startswith("ZeroshotCLIP"):
            own = without_keys(own, TRAINING_ONLY)  # a run that trains nothing: its schedule is no setting
        path, file = self._loaded(run, tpt)
        if tpt:
            section = (run.record or {}).get("tpt")
            kind = section.get("init") if isinstance(section, Mapping) else None
            own[INIT_KIND] = kind or ("checkpoint" if path else "words")
        if not path:
            return own
        source = self._source(path, run, search_up=tpt) if depth < _MAX_DEPTH else None
        if source is None:
            self._unresolved[run.directory] = path
        if tpt or source is None:
            own[INIT_FROM] = self._where(source.directory if source is not None else path)
            if source is not None:
                own[INIT_RUN] = fingerprint(self._settings(source, (), depth + 1))
            if file:
                own[INIT_FILE] = file
            if run.load_epoch is not None:
                own[INIT_EPOCH] = run.load_epoch
            return dict(sorted(own.items()))
        # An evaluation of a trained model: that model's settings, and the evaluation's own where they differ.
        trained = self._settings(source, columns, depth + 1)
        settings = dict(trained)
        for key, value in own.items():
            if key.startswith("DATASET.") or key == PARTIAL or (PARTIAL in trained and key not in trained):
                continue
            if key not in trained or trained[key] != value:
                settings[EVAL_PREFIX + key] = value
        if run.load_epoch is not None and run.load_epoch != trained.get("OPTIM.MAX_EPOCH"):
            settings[INIT_EPOCH] = run.load_epoch
        return dict(sorted(settings.items()))

    @staticmethod
    def _loaded(run: Run, tpt: bool) -> tuple[str | None, str | None]:
        """(the model folder or checkpoint path a run started from, the checkpoint's file name if it names one)."""
        if run.model_dir:
            return str(run.model_dir), None
        load = _config_value(run.config, f"TRAINER.{method_section(run.trainer)}.LOAD") if tpt else None
        if not load:
            return None, None
        load = str(load)
        if resolve_model_dir(load, [run.directory]) is None and "." in os.path.basename(load):
            return os.path.dirname(load) or ".", os.path.basename(load)
        return load, None

    def _source(self, path: str, run: Run, search_up: bool) -> Run | None:
        """The run that wrote ``path`` (its folder; for TPT's checkpoint paths, such as
        ``<run>/prompt_learner``, also a folder above it)."""
        near = [run.directory, self.root] if self.root else [run.directory]
        for _ in range(3 if search_up else 1):
            folder = resolve_model_dir(path, near)
            found = self._run_at(folder) if folder is not None else None
            if found is not None:
                return found
            path = os.path.dirname(path.rstrip("/\\"))
            if not path:
                break
        return None

    def _run_at(self, folder: str) -> Run | None:
        folder = os.path.realpath(folder)
        if folder in self._by_folder:
            return self._by_folder[folder]
        if folder not in self._on_disk:
            runs = runs_in_folder(folder).runs
            self._on_disk[folder] = runs[0] if runs else None
        return self._on_disk[folder]

    def _where(self, path: str) -> str:
        """``path`` for a row name: relative to the runs' common folder, ``seed<N>`` folders as ``seed*``."""
        if os.path.exists(path):
            path = os.path.realpath(path)
        if self.root and (path == self.root or path.startswith(self.root.rstrip(os.sep) + os.sep)):
            path = os.path.relpath(path, self.root)
        parts = ["seed*" if _SEED_FOLDER.match(part) else part for part in path.split(os.sep)]
        return os.sep.join(parts)


# ------------------------------------------------------------------------------------------ row names
def row_labels(base: str, settings: Mapping[str, Mapping[str, Any]], shared_cells: Iterable[Collection[str]],
               vary: Sequence[str] = ()) -> tuple[dict[str, str], list[str]]:
    """A row name for each settings fingerprint of the runs named ``base`` (``{fingerprint: settings}``).

    Fingerprints go to different rows when their settings differ in anything but ``vary`` (keys allowed to
    change from column to column of one row), and also when they share a cell (``shared_cells``: sets of
    fingerprints found in one cell). Rows are named ``base (what differs)`` with the fewest settings
    that tell every such pair apart (the initialisation first); returns the names and a note.
    """
    fps = sorted(settings)
    row_of = {fp: fingerprint(without_keys(settings[fp], vary)) for fp in fps}
    apart: dict[tuple[str, str], set[str]] = {}
    for a, b in combinations(fps, 2):
        if row_of[a] != row_of[b]:
            first, second = settings[a], settings[b]
            if PARTIAL in first and PARTIAL in second:  # records without a config: by what both recorded
                first, second = ({k: v for k, v in s.items() if k in first and k in second} for s in (first, second))
            differing = set(without_keys({key: None for key, _, _ in differing_keys(first, second)}, vary))
            if differing:
                apart[(a, b)] = differing
    for cell in shared_cells:
        for a, b in combinations(sorted(cell), 2):
            apart.setdefault((a, b), {k for k, _, _ in differing_keys(settings[a], settings[b])})
    if not apart:
        return {fp: base for fp in fps}, []
    picked = _pick_keys(apart)
    labels = {fp: _label(base, settings[fp], picked) for fp in fps}
    for a, b in apart:
        if labels[a] == labels[b]:  # two values that print alike: the fingerprint tells them apart
            labels[a], labels[b] = f"{labels[a]} [{a[:8]}]", f"{labels[b]} [{b[:8]}]"
    differing = sorted(set().union(*apart.values()))
    named = ", ".join(differing[:_MAX_NAMED]) + (f" and {len(differing) - _MAX_NAMED} more"
                                                 if len(differing) > _MAX_NAMED else "")
    rows = " / ".join(sorted(set(labels.values())))
    note = (f"{base}: runs whose settings differ in more than the seed are not averaged; they are in rows {rows} "
            f"(settings that differ: {named})")
    return labels, [note]


def _rank(key: str) -> int:
    """Which differing settings name rows first: the initialisation and missing configs, then config keys,
    then the weights, and a source run's hash only as a last resort."""
    if key in (PARTIAL, INIT_KIND):
        return 0
    if key.startswith("init.") and key != INIT_RUN:
        return 1
    if key == WEIGHTS:
        return 3
    if key == INIT_RUN:
        return 4
    return 2


def _pick_keys(apart: Mapping[tuple[str, str], set[str]]) -> list[str]:
    """Greedily, the fewest keys such that every pair in ``apart`` differs in one of them."""
    remaining = {pair: keys for pair, keys in apart.items() if keys}
    picked: list[str] = []
    while remaining:
        counts = Counter(key for keys in remaining.values() for key in keys)
        key = min(counts, key=lambda k: (_rank(k), -counts[k], k))
        picked.append(key)
        remaining = {pair: keys for pair, keys in remaining.items() if key not in keys}
    return picked


def _show(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if (not value or value != value.strip() or " " in value) else value
    if isinstance(value, list):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return str(value)


def _init_text(settings: Mapping[str, Any], picked: Sequence[str]) -> str:
    kind, origin = settings.get(INIT_KIND), settings.get(INIT_FROM)
    text = f"from {KIND_NAMES.get(kind, kind)}" if kind else ""
    if origin and kind != "words":
        text = f"{text}: {origin}" if text else f"from {origin}"
    if INIT_FILE in picked and settings.get(INIT_FILE):
        text += f" ({settings[INIT_FILE]})"
    if INIT_EPOCH in picked and settings.get(INIT_EPOCH) is not None:
        text += (", " if text else "") + f"load-epoch {settings[INIT_EPOCH]}"
    if INIT_RUN in picked and settings.get(INIT_RUN):
        text += f" [{str(settings[INIT_RUN])[:8]}]"
    return text.strip()


def _label(base: str, settings: Mapping[str, Any], picked: Sequence[str]) -> str:
    parts = []
    if any(key.startswith("init.") for key in picked):
        parts.append(_init_text(settings, picked))
    for key in sorted(k for k in picked if not k.startswith("init.")):
        value = settings.get(key)
        if key == PARTIAL:
            parts.append(PARTIAL_VALUE if value else "")
        elif key == WEIGHTS:
            parts.append(f"weights {str(value)[:8]}" if value else "" if PARTIAL in settings else "weights unknown")
        elif key.startswith(EVAL_PREFIX):
            parts.append("" if value is None else f"{key}={_show(value)}")  # absent: as the model was trained
        else:
            parts.append(f"{key} unset" if value is None else f"{key}={_show(value)}")
    parts = [part for part in parts if part]
    return f"{base} ({', '.join(parts)})" if parts else base
