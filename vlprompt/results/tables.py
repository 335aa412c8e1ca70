"""The tables the CoOp, CoCoOp and TPT papers print, built from runs, and the test-time methods side by side
(top-1, calibration error and cost).

Conventions, the same in every table:
- a cell is the mean over seeds with the population standard deviation (``np.std``, as
  ``parse_test_res.py``) and the number of seeds; averages over datasets are plain means of the
  per-dataset means;
- a run that does not exist is a missing cell (``None``), never a zero, and an average over datasets is
  missing when any of its datasets is; cells that do not apply (a trained method at 0 shots) are ``NA``;
- a cell averages runs of one configuration only: runs whose settings differ in more than the seed (and
  the keys the columns stand for) are in different rows, named by what differs (``CoOp
  (OPTIM.MAX_EPOCH=50)``, ``TPT (from words)``; :mod:`vlprompt.results.identity`), and a note says so;
- two runs of the same settings, dataset and seed (a run repeated in another folder) are not averaged:
  the newest is used and a note says which was left out; so is every run left out of a table it belongs
  to (no such metric, a model trained on another source).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from vlprompt.engine.fingerprint import fingerprint
from vlprompt.results.identity import RunSettings, row_labels
from vlprompt.results.runs import (
    DG_TARGETS,
    FEW_SHOT_DATASETS,
    SHIFT_SETS,
    TPT_FINE_GRAINED,
    XD_TARGETS,
    Run,
    canonical_dataset,
    display_name,
    resolve_model_dir,
)

NA = "n/a"  # a cell that does not apply (as opposed to None: a run that is missing)
ZERO_SHOT_TRAINERS = ("ZeroshotCLIP", "ZeroshotCLIP2")
LINEAR_PROBE_TRAINER = "LinearProbeCLIP"
TABLE_KINDS = ("few_shot", "base2new", "cross_dataset", "dg", "tpt", "tta")
IN_NO_TABLE = ("full",)  # protocols no paper table shows (trained on all the data)
TRANSFER_PROTOCOLS = ("zeroshot", "tpt", "cross_dataset", "domain_generalization", "eval")
# Config keys a table's columns stand for (beyond identity.COLUMN_KEYS: seed and dataset): runs that
# differ only in them may share a row.
FEW_SHOT_COLUMNS = ("DATASET.NUM_SHOTS",)
BASE2NEW_COLUMNS = ("DATASET.SUBSAMPLE_CLASSES",)
TRANSFER_COLUMNS: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cell:
    """A number in a table: ``mean``; over seeds also ``std`` (population) and ``n`` (seeds)."""

    mean: float
    std: float | None = None
    n: int | None = None

    @classmethod
    def of_seeds(cls, values: Sequence[float]) -> Cell:
        array = np.asarray(values, dtype=np.float64)
        return cls(float(array.mean()), float(array.std()), len(array))


CellValue = Union[Cell, None, str]


@dataclass
class Table:
    """Rows of cells. ``rows`` are (keys, cells) with one key per ``row_header`` entry."""

    kind: str
    title: str
    row_header: list[str]
    columns: list[str]
    rows: list[tuple[list[str], list[CellValue]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, *keys: str, column: str) -> CellValue:
        """The cell of the row with ``keys`` in ``column`` (KeyError when there is no such row or column)."""
        index = self.columns.index(column)
        for row_keys, cells in self.rows:
            if tuple(row_keys) == keys:
                return cells[index]
        raise KeyError(f"no row {keys} in table {self.title!r}; rows: {[tuple(k) for k, _ in self.rows]}")


def harmonic_mean(base: float, new: float) -> float:
    """H = 2·base·new / (base + new), the base-to-novel summary of CoCoOp."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def mean_of(cells: Iterable[CellValue]) -> Cell | None:
    """The plain mean of cells' means; missing if any cell is."""
    cells = list(cells)
    if not cells or any(not isinstance(c, Cell) for c in cells):
        return None
    return Cell(float(np.mean([c.mean for c in cells])))


# ------------------------------------------------------------------------------------------ grouping
Labeler = Callable[[Run], str]


def make_labeler(label_by: Sequence[str] = ("trainer",)) -> Labeler:
    """Row labels from run fields: the first field's value, then ``(KEY=value, ...)`` for the others
    (a dotted config key shows its last part), e.g. ``CoOp (CSC=True, CLASS_TOKEN_POSITION=middle)``."""
    fields = [f.strip() for f in label_by if f.strip()] or ["trainer"]

    def label(run: Run) -> str:
        head = str(run.field_value(fields[0]))
        extra = [f"{f.rsplit('.', 1)[-1]}={run.field_value(f)}" for f in fields[1:]]
        return f"{head} ({', '.join(extra)})" if extra else head

    return label


class SeedGroups:
    """Runs grouped into rows and cells, one run per seed in a cell.

    ``add`` files a run under a method (its ``--label-by`` name) and a column; :meth:`resolve` then splits
    each method into rows so that no row mixes runs whose settings differ in more than the seed and the
    ``columns`` keys (:mod:`vlprompt.results.identity`; ``vary`` keys may differ between the columns of a
    row, never within a cell), and names the rows by what differs. A second run of the same row, cell and
    seed is set aside (the one with the higher priority, then the newer, is kept) and reported in ``notes``.
    """

    def __init__(self, settings: RunSettings | None = None, columns: Sequence[str] = (),
                 vary: Sequence[str] = ()) -> None:
        self.settings = settings
        self.columns = tuple(columns)
        self.vary = tuple(vary)
        self.groups: dict[tuple, dict[int, tuple[int, Run]]] = defaultdict(dict)
        self.trainer_of: dict[str, str] = {}
        self.members: dict[str, list[Run]] = defaultdict(list)
        self.notes: list[str] = []
        self._entries: list[tuple[str, tuple, Run, int, Run]] = []
        self._lacking: dict[str, list[Run]] = defaultdict(list)  # metric -> runs left out without it
        self._resolved = False

    def add(self, method: str, column: tuple, run: Run, priority: int = 0, like: Run | None = None) -> None:
        """File ``run`` under ``method`` in ``column``; ``like``: the run whose settings decide its row (a
        training run shown beside the evaluations that loaded it goes to their row)."""
        if self._resolved:
            raise RuntimeError("SeedGroups.add after resolve()")
        self._entries.append((method, tuple(column), run, priority, like or run))

    def lacks(self, run: Run, metric: str) -> None:
        """``run`` belongs here but has no ``metric``: left out, and one note says so for all such runs."""
        self._lacking[metric].append(run)

    def resolve(self) -> SeedGroups:
        """Split methods into rows (once); returns self."""
        if self._resolved:
            return self
        self._resolved = True
        settings = self.settings or RunSettings(run for _, _, run, _, _ in self._entries)
        by_method: dict[str, list[tuple[tuple, Run, int, Run, str]]] = defaultdict(list)
        found: dict[str, dict[str, dict]] = defaultdict(dict)
        for method, column, run, priority, like in self._entries:
            values = settings.of(like, self.columns)
            key = fingerprint(values)
            found[method][key] = values
            by_method[method].append((column, run, priority, like, key))
        for method, entries in by_method.items():
            cells: dict[tuple, set[str]] = defaultdict(set)
            for column, _, _, _, key in entries:
                cells[column].add(key)
            labels, notes = row_labels(method, found[method], [c for c in cells.values() if len(c) > 1], self.vary)
            self.notes += notes
            for column, run, priority, like, key in entries:
                label = labels[key]
                self.trainer_of.setdefault(label, like.trainer)
                self.members[label].append(run)
                self._keep((label, *column), run, priority)
        self.notes += settings.notes_for(like for *_, like in self._entries)
        for metric, runs in self._lacking.items():
            have = sorted({name for run in runs for name in run.metrics}) or ["no metric"]
            self.notes.append(f"{len(runs)} run(s) left out: their result has no {metric} (e.g. {runs[0].directory}; "
                              f"they have {', '.join(have)}; --metric chooses)")
        return self

    def _keep(self, key: tuple, run: Run, priority: int) -> None:
        seeds = self.groups[key]
        held = seeds.get(run.seed)
        if held is None:
            seeds[run.seed] = (priority, run)
            return
        held_priority, held_run = held
        if held_run.directory == run.directory and held_run.dataset == run.dataset:
            return
        if (priority, run.finished) > (held_priority, held_run.finished):
            seeds[run.seed] = (priority, run)
            kept, dropped = run, held_run
        else:
            kept, dropped = held_run, run
        if priority == held_priority:
            self.notes.append(
                f"two runs of {' / '.join(map(str, key))} with seed {run.seed} and the same settings: using "
                f"{kept.directory}, not {dropped.directory}"
            )

    def runs(self, key: tuple) -> list[Run]:
        """The kept runs of ``key`` (row name, then the column), by seed."""
        self.resolve()
        return [run for _, (_, run) in sorted(self.groups.get(key, {}).items())]

    def cell(self, key: tuple, metric: str) -> Cell | None:
        values = [v for v in (run.metric(metric) for run in self.runs(key)) if v is not None]
        return Cell.of_seeds(values) if values else None


def is_zero_shot(trainer: str) -> bool:
    return trainer in ZERO_SHOT_TRAINERS or trainer.startswith("ZeroshotCLIP")


def order_methods(labels: Iterable[str], trainer_of: dict[str, str]) -> list[str]:
    """Zero-shot CLIP first, then the linear probe, then the rest alphabetically (as the papers)."""

    def rank(label: str) -> tuple:
        trainer = trainer_of.get(label, "")
        kind = 0 if is_zero_shot(trainer) else 1 if trainer == LINEAR_PROBE_TRAINER else 2
        return kind, label

    return sorted(set(labels), key=rank)


def order_datasets(found: Iterable[str], standard: Sequence[str]) -> list[str]:
    found = set(found)
    return [d for d in standard if d in found] + sorted(found - set(standard))


def _selected(datasets: Sequence[str] | None) -> list[str] | None:
    return None if datasets is None else [canonical_dataset(d) for d in datasets]


def _never_run_note(shown: Sequence[str], standard: Sequence[str], what: str) -> list[str]:
    absent = [display_name(d) for d in standard if d not in shown]
    if not absent or len(absent) == len(standard):
        return []
    return [f"{what} without any run (not in the table or its average): {', '.join(absent)}"]


# ------------------------------------------------------------------------------------------ few-shot
@dataclass
class FewShotResults:
    """Accuracy per (dataset, method, shots); 0 shots is zero-shot CLIP. Shared by the table and the plot."""

    datasets: list[str]
    methods: list[str]
    shots: list[int]
    cells: dict[tuple[str, str, int], Cell]
    trainer_of: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def is_zero_shot(self, method: str) -> bool:
        return is_zero_shot(self.trainer_of.get(method, ""))

    def method_shots(self, method: str) -> list[int]:
        """The columns a method should fill: 0 for zero-shot CLIP, every other shot count for the rest."""
        return [0] if self.is_zero_shot(method) else [s for s in self.shots if s > 0]

    def cell(self, dataset: str, method: str, shots: int) -> Cell | None:
        return self.cells.get((dataset, method, shots))

    def average(self, method: str, shots: int) -> Cell | None:
        """Mean over all datasets of the table; missing if the method lacks any of them."""
        return mean_of(self.cell(d, method, shots) for d in self.datasets)


def few_shot_results(runs: Iterable[Run], datasets: Sequence[str] | None = None,
                     label_by: Sequence[str] = ("trainer",), metric: str = "accuracy", *,
                     vary: Sequence[str] = (), settings: RunSettings | None = None) -> FewShotResults:
    """Few-shot runs (all classes, NUM_SHOTS > 0) and zero-shot CLIP (as 0 shots) by dataset and method;
    runs of other settings than the seed and the shots are in other rows (``vary``: see :class:`SeedGroups`)."""
    runs = list(runs)
    label = make_labeler(label_by)
    groups = SeedGroups(settings or RunSettings(runs), FEW_SHOT_COLUMNS, vary)
    wanted = _selected(datasets)
    for run in runs:
        if run.subsample not in ("all", ""):
            continue
        if run.protocol == "zeroshot":
            shots = 0
        elif run.protocol == "few_shot" and run.shots > 0:
            shots = run.shots
        else:
            continue
        if wanted is not None and run.dataset not in wanted:
            continue
        if run.metric(metric) is None:
            groups.lacks(run, metric)
            continue
        groups.add(label(run), (run.dataset, shots), run)
    keys = list(groups.resolve().groups)
    shown = wanted if wanted is not None else order_datasets({k[1] for k in keys}, FEW_SHOT_DATASETS)
    cells = {(d, m, s): cell for m, d, s in keys if (cell := groups.cell((m, d, s), metric)) is not None}
    notes = list(groups.notes)
    if wanted is None:
        notes += _never_run_note(shown, FEW_SHOT_DATASETS, "Datasets")
    return FewShotResults(
        datasets=list(shown),
        methods=order_methods({k[0] for k in keys}, groups.trainer_of),
        shots=sorted({k[2] for k in keys}),
        cells=cells,
        trainer_of=dict(groups.trainer_of),
        notes=notes,
    )


def few_shot_table(results: FewShotResults) -> Table:
    """Rows (dataset, method), columns shots; an ``Average`` block when there is more than one dataset."""
    table = Table("few_shot", "Few-shot accuracy (%): mean ± std over seeds (number of seeds)",
                  ["Dataset", "Method"], [str(s) for s in results.shots], notes=list(results.notes))

    def row(method: str, value: Callable[[int], CellValue]) -> list[CellValue]:
        applicable = set(results.method_shots(method))
        return [value(s) if s in applicable else NA for s in results.shots]

    for dataset in results.datasets:
        for method in results.methods:
            table.rows.append(([display_name(dataset), method],
                               row(method, lambda s, d=dataset, m=method: results.cell(d, m, s))))
    if len(results.datasets) > 1:
        for method in results.methods:
            table.rows.append((["Average", method], row(method, lambda s, m=method: results.average(m, s))))
        table.notes.append(f"Average: mean over the {len(results.datasets)} datasets above; missing when a "
                           "method lacks any of them.")
    if 0 in results.shots:
        table.notes.append("0 shots: zero-shot CLIP.")
    return table


# ------------------------------------------------------------------------------------------ base-to-new
BASE_PROTOCOLS = {"base2new_test_base": 1, "base2new_train": 0}  # an explicit evaluation is preferred


def base2new_table(runs: Iterable[Run], datasets: Sequence[str] | None = None,
                   label_by: Sequence[str] = ("trainer",), metric: str = "accuracy", *,
                   vary: Sequence[str] = (), settings: RunSettings | None = None) -> Table:
    """Base, New and H per dataset and method, and their average over datasets.

    H is the harmonic mean of the seed-averaged Base and New accuracies, and the average H is the
    harmonic mean of the averaged Base and New (as CoCoOp reports it: H(80.47, 71.69) = 75.83), not the
    mean of the per-dataset H.
    """
    runs = list(runs)
    label = make_labeler(label_by)
    groups = SeedGroups(settings or RunSettings(runs), BASE2NEW_COLUMNS, vary)
    wanted = _selected(datasets)
    for run in runs:
        if wanted is not None and run.dataset not in wanted:
            continue
        if run.protocol in BASE_PROTOCOLS:
            part, priority = "Base", BASE_PROTOCOLS[run.protocol]
        elif run.protocol == "base2new_test_new":
            part, priority = "New", 0
        else:
            continue
        if run.metric(metric) is None:
            groups.lacks(run, metric)
            continue
        groups.add(label(run), (run.dataset, part), run, priority)
    keys = list(groups.resolve().groups)
    shown = wanted if wanted is not None else order_datasets({k[1] for k in keys}, FEW_SHOT_DATASETS)
    methods = order_methods({k[0] for k in keys}, groups.trainer_of)
    table = Table("base2new", "Base-to-new generalisation (%): Base, New and their harmonic mean H",
                  ["Dataset", "Method"], ["Base", "New", "H"], notes=list(groups.notes))
    for dataset in shown:
        for method in methods:
            base = groups.cell((method, dataset, "Base"), metric)
            new = groups.cell((method, dataset, "New"), metric)
            h = Cell(harmonic_mean(base.mean, new.mean)) if base and new else None
            table.rows.append(([display_name(dataset), method], [base, new, h]))
    if len(shown) > 1:
        for method in methods:
            base = mean_of(groups.cell((method, d, "Base"), metric) for d in shown)
            new = mean_of(groups.cell((method, d, "New"), metric) for d in shown)
            h = Cell(harmonic_mean(base.mean, new.mean)) if base and new else None
            table.rows.append((["Average", method], [base, new, h]))
        table.notes.append(f"Average: mean over the {len(shown)} datasets above (missing when a method lacks "
                           "any); its H is the harmonic mean of the average Base and New.")
    table.notes.append("H = 2·Base·New / (Base + New) of the seed-averaged Base and New.")
    if wanted is None:
        table.notes += _never_run_note(shown, FEW_SHOT_DATASETS, "Datasets")
    return table


# ------------------------------------------------------------------------------------------ transfer
@dataclass
class TransferResults:
    """Accuracy per (method, dataset) for models evaluated away from their training data (and zero-shot
    CLIP, TPT), with the source dataset's accuracy of the same models."""

    groups: SeedGroups
    trainer_of: dict[str, str]
    protocols_of: dict[str, set[str]]
    metric: str

    def cell(self, method: str, dataset: str) -> Cell | None:
        return self.groups.cell((method, dataset), self.metric)

    def datasets_of(self, protocols: Iterable[str]) -> set[str]:
        protocols = set(protocols)
        return {d for (m, d), seeds in self.groups.groups.items()
                if any(run.protocol in protocols for _, run in seeds.values())}

    def methods_with(self, protocols: Iterable[str]) -> list[str]:
        protocols = set(protocols)
        return [m for m, found in self.protocols_of.items() if found & protocols]

    def zero_shot_methods(self) -> list[str]:
        return [m for m, t in self.trainer_of.items() if is_zero_shot(t)]


def transfer_results(runs: Sequence[Run], source: str = "ImageNet", label_by: Sequence[str] = ("trainer",),
                     metric: str = "accuracy", *, vary: Sequence[str] = (),
                     settings: RunSettings | None = None) -> TransferResults:
    """Evaluations on every dataset (zero-shot, TPT, cross-dataset, domain generalisation), plus, for
    models trained on ``source``, their accuracy there: an evaluation on ``source`` when there is one,
    else the final test of the training run their ``model_dir`` points at (in the evaluations' row)."""
    label = make_labeler(label_by)
    groups = SeedGroups(settings or RunSettings(runs), TRANSFER_COLUMNS, vary)
    by_folder = {os.path.realpath(run.directory): run for run in runs if run.dataset == source}
    for run in runs:
        if run.subsample not in ("all", "") or run.protocol not in TRANSFER_PROTOCOLS:
            continue
        if run.protocol in ("cross_dataset", "domain_generalization") and run.source_dataset not in (None, source):
            groups.notes.append(f"{run.directory}: left out, it evaluates a model trained on "
                                f"{display_name(str(run.source_dataset))}, not {display_name(source)} (--source)")
            continue
        if run.metric(metric) is None:
            groups.lacks(run, metric)
            continue
        method = label(run)
        groups.add(method, (run.dataset,), run, priority=1)
        if run.protocol in ("cross_dataset", "domain_generalization"):
            near = [os.path.dirname(run.directory)]
            trained = resolve_model_dir(run.model_dir, near)
            source_run = by_folder.get(trained) if trained else None
            if source_run is not None and source_run.metric(metric) is not None:
                groups.add(method, (source,), source_run, priority=0, like=run)
    groups.resolve()
    protocols_of: dict[str, set[str]] = defaultdict(set)
    for method, runs_of in groups.members.items():
        protocols_of[method] = {run.protocol for run in runs_of}
    return TransferResults(groups, dict(groups.trainer_of), dict(protocols_of), metric)


def _transfer_table(results: TransferResults, kind: str, title: str, methods: Sequence[str],
                    columns: Sequence[str], averages: Sequence[tuple[str, Sequence[str]]],
                    notes: Sequence[str] = ()) -> Table:
    table = Table(kind, title, ["Method"], [display_name(c) for c in columns] + [name for name, _ in averages],
                  notes=list(notes))
    for method in order_methods(methods, results.trainer_of):
        cells: list[CellValue] = [results.cell(method, d) for d in columns]
        cells += [mean_of(results.cell(method, d) for d in over) if over else None for _, over in averages]
        table.rows.append(([method], cells))
    for name, over in averages:
        table.notes.append(f"{name}: mean over {', '.join(display_name(d) for d in over)}; missing when any is.")
    return table


def cross_dataset_table(runs: Sequence[Run], source: str = "ImageNet", datasets: Sequence[str] | None = None,
                        label_by: Sequence[str] = ("trainer",), metric: str = "accuracy", *,
                        vary: Sequence[str] = (), settings: RunSettings | None = None) -> Table:
    """Source accuracy, then each target dataset and the target average (CoCoOp's cross-dataset table)."""
    source = canonical_dataset(source)
    results = transfer_results(runs, source, label_by, metric, vary=vary, settings=settings)
    wanted = _selected(datasets)
    targets = wanted if wanted is not None else order_datasets(results.datasets_of(["cross_dataset"]), XD_TARGETS)
    targets = [d for d in targets if d != source]
    methods = results.methods_with(["cross_dataset"])
    methods += [m for m in results.zero_shot_methods() if m not in methods]
    notes = list(results.groups.notes)
    if wanted is None and targets:
        notes += _never_run_note(targets, [d for d in XD_TARGETS if d != source], "Targets")
    return _transfer_table(results, "cross_dataset", f"Cross-dataset transfer (%): trained on {display_name(source)}",
                           methods, [source] + targets, [("Average", targets)], notes)


def dg_table(runs: Sequence[Run], source: str = "ImageNet", datasets: Sequence[str] | None = None,
             label_by: Sequence[str] = ("trainer",), metric: str = "accuracy", *,
             vary: Sequence[str] = (), settings: RunSettings | None = None) -> Table:
    """Source (ImageNet) accuracy, its four shifted versions and their (OOD) average."""
    source = canonical_dataset(source)
    results = transfer_results(runs, source, label_by, metric, vary=vary, settings=settings)
    wanted = _selected(datasets)
    found = results.datasets_of(["domain_generalization"])
    targets = wanted if wanted is not None else order_datasets(found, DG_TARGETS)
    targets = [d for d in targets if d != source]
    methods = results.methods_with(["domain_generalization"])
    methods += [m for m in results.zero_shot_methods() if m not in methods]
    notes = list(results.groups.notes)
    if wanted is None and targets:
        notes += _never_run_note(targets, DG_TARGETS, "Targets")
    return _transfer_table(results, "dg", f"Domain generalisation (%): trained on {display_name(source)}",
                           methods, [source] + targets, [("OOD Average", targets)], notes)


def tpt_tables(runs: Sequence[Run], datasets: Sequence[str] | None = None, label_by: Sequence[str] = ("trainer",),
               metric: str = "accuracy", source: str = "ImageNet", *,
               vary: Sequence[str] = (), settings: RunSettings | None = None) -> list[Table]:
    """TPT's two tables: ``source`` (ImageNet) and its distribution shifts (Average and OOD Average), and
    the other sets (Average), with zero-shot CLIP and ``source``-trained prompt methods as baselines."""
    source = canonical_dataset(source)
    results = transfer_results(runs, source, label_by, metric, vary=vary, settings=settings)
    found = results.datasets_of(["tpt"])
    wanted = _selected(datasets)
    if wanted is not None:
        found = set(wanted)
    methods = results.methods_with(["tpt", "cross_dataset", "domain_generalization"])
    methods += [m for m in results.zero_shot_methods() if m not in methods]
    tables = []
    shift_sets = SHIFT_SETS.get(source, (source,))
    shifts = [d for d in shift_sets if d in found]
    if shifts:
        ood = [d for d in shifts if d != source]
        tables.append(_transfer_table(
            results, "tpt", f"Test-time prompt tuning (%): {display_name(source)} and its distribution shifts",
            methods, shifts, [("Average", shifts), ("OOD Average", ood)], results.groups.notes,
        ))
    fine = order_datasets(found - set(shift_sets), TPT_FINE_GRAINED)
    if fine:
        tables.append(_transfer_table(results, "tpt", "Test-time prompt tuning (%): fine-grained datasets",
                                      methods, fine, [("Average", fine)], [] if shifts else results.groups.notes))
    return tables


# ------------------------------------------------------------------------------------------ test-time methods
# What the test-time methods' table shows per method: top-1, C-TPT's calibration error and the cost.
TTA_METRICS = (("accuracy", "Top-1"), ("ece", "ECE"), ("seconds_per_image", "s/image"))
TTA_ORDER = ("TPT", "CTPT", "Zero", "MTA", "TDA")  # TPT, then its successors by the papers' dates


def tta_tables(runs: Sequence[Run], datasets: Sequence[str] | None = None, label_by: Sequence[str] = ("trainer",),
               source: str = "ImageNet", *, vary: Sequence[str] = (),
               settings: RunSettings | None = None) -> list[Table]:
    """The test-time methods (TPT, C-TPT, Zero, MTA, TDA, ...) side by side in TPT's layout: ``source`` and
    its distribution shifts (Average, OOD Average), then the other sets (Average); per method a row of
    top-1, one of expected calibration error and one of seconds per image."""
    source = canonical_dataset(source)
    runs = [run for run in runs if run.protocol == "tpt"]
    settings = settings or RunSettings(runs)
    results = {metric: transfer_results(runs, source, label_by, metric, vary=vary, settings=settings)
               for metric, _ in TTA_METRICS}
    top1 = results["accuracy"]
    wanted = _selected(datasets)
    found = set(wanted) if wanted is not None else top1.datasets_of(["tpt"])
    methods = sorted(order_methods(top1.methods_with(["tpt"]), top1.trainer_of),
                     key=lambda m: TTA_ORDER.index(top1.trainer_of.get(m)) if top1.trainer_of.get(m) in TTA_ORDER
                     else len(TTA_ORDER))  # stable: the rest keep order_methods' order after these
    legend = ("Top-1 and ECE in %; ECE: expected calibration error of the predictions' confidences (ECE_BINS "
              "equal-width bins, 15 by default); s/image: seconds per test image as the run timed it "
              "(its machine, its batch; a resumed run's time covers the images it did).")
    notes = [*top1.groups.notes, legend]
    tables = []
    shift_sets = SHIFT_SETS.get(source, (source,))
    groups = []
    shifts = [d for d in shift_sets if d in found]
    if shifts:
        groups.append((f"Test-time methods: {display_name(source)} and its distribution shifts", shifts,
                       [("Average", shifts), ("OOD Average", [d for d in shifts if d != source])]))
    fine = order_datasets(found - set(shift_sets), TPT_FINE_GRAINED)
    if fine:
        groups.append(("Test-time methods: fine-grained datasets", fine, [("Average", fine)]))
    for title, columns, averages in groups:
        table = Table("tta", title, ["Method", "Metric"], [display_name(c) for c in columns] + [n for n, _ in averages],
                      notes=notes if not tables else [])
        for method in methods:
            for metric, name in TTA_METRICS:
                cells: list[CellValue] = [results[metric].cell(method, d) for d in columns]
                cells += [mean_of(results[metric].cell(method, d) for d in over) if over else None
                          for _, over in averages]
                table.rows.append(([method, name], cells))
        for name, over in averages:
            table.notes.append(f"{name}: mean over {', '.join(display_name(d) for d in over)}; missing when any is.")
        tables.append(table)
    return tables


# ------------------------------------------------------------------------------------------ all
def build_tables(runs: Sequence[Run], kinds: Sequence[str] = TABLE_KINDS, datasets: Sequence[str] | None = None,
                 label_by: Sequence[str] = ("trainer",), metric: str = "accuracy",
                 source: str = "ImageNet", *, vary: Sequence[str] = ()) -> list[Table]:
    """The requested tables that have runs (each kind in ``TABLE_KINDS``); ``vary``: settings that may
    change from column to column of a row (see :class:`SeedGroups`)."""
    tables: list[Table] = []
    same = {"vary": vary, "settings": RunSettings(runs)}
    for kind in kinds:
        if kind == "few_shot":
            results = few_shot_results(runs, datasets, label_by, metric, **same)
            if results.cells:
                tables.append(few_shot_table(results))
        elif kind == "base2new":
            table = base2new_table(runs, datasets, label_by, metric, **same)
            if table.rows:
                tables.append(table)
        elif kind == "cross_dataset":
            table = cross_dataset_table(runs, source, datasets, label_by, metric, **same)
            if any(r.protocol == "cross_dataset" for r in runs) and table.rows:
                tables.append(table)
        elif kind == "dg":
            table = dg_table(runs, source, datasets, label_by, metric, **same)
            if any(r.protocol == "domain_generalization" for r in runs) and table.rows:
                tables.append(table)
        elif kind == "tpt":
            if any(r.protocol == "tpt" for r in runs):
                tables += tpt_tables(runs, datasets, label_by, metric, source, **same)
        elif kind == "tta":
            if any(r.protocol == "tpt" for r in runs):
                tables += tta_tables(runs, datasets, label_by, source, **same)
        else:
            raise ValueError(f'unknown table "{kind}"; choose from {", ".join(TABLE_KINDS)}')
    return tables
