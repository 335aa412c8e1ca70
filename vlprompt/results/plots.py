"""The CoOp paper's few-shot figure: accuracy against the number of shots, one line per method, zero-shot
CLIP as a star at 0 shots, the linear probe dotted; one PNG per dataset and one for the average.

matplotlib (the ``tables`` extra) is imported only here, and only its object API is used (no pyplot
state), so plotting works headless and inside other programs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

from vlprompt.engine.checkpoint import atomic_write_bytes
from vlprompt.results.runs import display_name
from vlprompt.results.tables import LINEAR_PROBE_TRAINER, Cell, FewShotResults

AVERAGE = "average"
X_LABEL = "Number of labeled training examples per class"
Y_LABEL = "Score (%)"


@dataclass
class Series:
    """One method's points: only the shot counts that have runs (a missing run is a gap, not a zero)."""

    method: str
    shots: list[int]
    means: list[float]
    stds: list[float | None]
    zero_shot: bool
    linear_probe: bool


def few_shot_series(results: FewShotResults, dataset: str = AVERAGE) -> list[Series]:
    """The lines of one panel: a dataset's cells, or (``"average"``) the means over all datasets."""
    series = []
    for method in results.methods:
        shots, means, stds = [], [], []
        for s in results.method_shots(method):
            cell = results.average(method, s) if dataset == AVERAGE else results.cell(dataset, method, s)
            if isinstance(cell, Cell):
                shots.append(s)
                means.append(cell.mean)
                stds.append(cell.std if cell.n and cell.n > 1 else None)
        if shots:
            series.append(Series(method, shots, means, stds, results.is_zero_shot(method),
                                 results.trainer_of.get(method) == LINEAR_PROBE_TRAINER))
    return series


def _import_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plotting needs matplotlib: pip install 'vlprompt[tables]' (or pip install matplotlib)"
        ) from err
    return Figure, FigureCanvasAgg


def draw_panel(series: list[Series], title: str, shots: list[int]):
    """A matplotlib Figure with the panel (not saved)."""
    Figure, FigureCanvasAgg = _import_matplotlib()
    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    ax.set_facecolor("#EBEBEB")
    ticks = sorted(set([0] + [s for s in shots if s > 0]))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_title(title)
    ax.grid(axis="x", color="white", linewidth=1)
    colors = iter(["C0", "C1", "C2", "C3", "C5", "C6", "C7", "C8", "C9"])
    values = [m for s in series for m in s.means]
    spread = (max(values) - min(values)) if values else 0.0
    for line in series:
        if line.zero_shot:
            ax.axhline(line.means[0], color="white", linewidth=1)
            ax.plot(0, line.means[0], marker="*", markersize=9, color="C4", linestyle="none",
                    label=f"{line.method} (zero-shot)")
            continue
        color = "C4" if line.linear_probe else next(colors, "C0")
        ax.plot(line.shots, line.means, marker="o", markersize=4, color=color, label=line.method,
                linestyle="dotted" if line.linear_probe else "solid")
        with_std = [(s, m, d) for s, m, d in zip(line.shots, line.means, line.stds) if d is not None]
        if with_std:
            xs, ms, ds = zip(*with_std)
            ax.fill_between(xs, [m - d for m, d in zip(ms, ds)], [m + d for m, d in zip(ms, ds)],
                            color=color, alpha=0.15, linewidth=0)
    if values:
        margin = max(spread * 0.08, 0.5)
        ax.set_ylim(min(values) - margin, max(values) + margin)
    ax.legend(loc="lower right")
    return figure


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(str(path), buffer.getvalue())
    return Path(path)


def plot_few_shot(results: FewShotResults, out_dir: str | os.PathLike) -> list[Path]:
    """``<out_dir>/<dataset>.png`` for each dataset and ``average.png`` when there are several; returns the
    paths written (a dataset without any point gets no file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = [(d, display_name(d)) for d in results.datasets]
    if len(results.datasets) > 1:
        panels.append((AVERAGE, f"Average over {len(results.datasets)} datasets"))
    for dataset, title in panels:
        series = few_shot_series(results, dataset)
        if not series:
            continue
        written.append(save_figure(draw_panel(series, title, results.shots), out / f"{dataset}.png"))
    return written
