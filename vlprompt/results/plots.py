"""The CoOp paper's few-shot figure: accuracy against the number of shots, one line per method, zero-shot
CLIP as a star at 0 shots, the linear probe dotted; one PNG per dataset and one for the average. A method
keeps its colour and marker in every figure, and the legend sits outside the axes.

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


ZERO_SHOT_COLORS = ("black", "dimgray", "darkgray")  # zero-shot CLIP's own; no method uses them
METHOD_COLORS = tuple(f"C{i}" for i in range(10))  # matplotlib's default cycle
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 against 10 colours: 70 distinct pairs


@dataclass(frozen=True)
class Style:
    """How one method is drawn in every figure."""

    color: str
    marker: str
    linestyle: str


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


def method_styles(results: FewShotResults) -> dict[str, Style]:
    """One colour, marker and line per method for every figure drawn from ``results``: assigned in the
    table's method order, so a method missing from one panel does not shift the others. Zero-shot CLIP is
    a star in black (then greys), colours no method uses; the linear probe is dotted, prompt methods solid."""
    styles: dict[str, Style] = {}
    zero_shot = others = 0
    for method in results.methods:
        if results.is_zero_shot(method):
            styles[method] = Style(ZERO_SHOT_COLORS[zero_shot % len(ZERO_SHOT_COLORS)], "*", "none")
            zero_shot += 1
            continue
        linear_probe = results.trainer_of.get(method) == LINEAR_PROBE_TRAINER
        styles[method] = Style(METHOD_COLORS[others % len(METHOD_COLORS)], METHOD_MARKERS[others % len(METHOD_MARKERS)],
                               "dotted" if linear_probe else "solid")
        others += 1
    return styles


def _styles_of(series: list[Series]) -> dict[str, Style]:
    """Styles for a panel drawn on its own (no results at hand): the same rules, in the panel's order."""
    methods = [line.method for line in series]
    trainer_of = {line.method: LINEAR_PROBE_TRAINER for line in series if line.linear_probe}
    trainer_of.update({line.method: "ZeroshotCLIP" for line in series if line.zero_shot})
    return method_styles(FewShotResults([], methods, [], {}, trainer_of))


def draw_panel(series: list[Series], title: str, shots: list[int], styles: dict[str, Style] | None = None):
    """A matplotlib Figure with the panel (not saved); ``styles``: :func:`method_styles` of the results, so
    every panel of a set draws a method alike. The legend is outside the axes, right of them, so it never
    covers a point."""
    Figure, FigureCanvasAgg = _import_matplotlib()
    styles = styles or _styles_of(series)
    figure = Figure(figsize=(8.4, 4.8))
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
    values = [m for s in series for m in s.means]
    spread = (max(values) - min(values)) if values else 0.0
    for line in series:
        style = styles[line.method]
        if line.zero_shot:
            ax.axhline(line.means[0], color=style.color, linewidth=0.8, linestyle="dashed", alpha=0.35)
            ax.plot(0, line.means[0], marker=style.marker, markersize=12, color=style.color, linestyle="none",
                    label=f"{line.method} (zero-shot)")
            continue
        ax.plot(line.shots, line.means, marker=style.marker, markersize=5, color=style.color, label=line.method,
                linestyle=style.linestyle)
        with_std = [(s, m, d) for s, m, d in zip(line.shots, line.means, line.stds) if d is not None]
        if with_std:
            xs, ms, ds = zip(*with_std)
            ax.fill_between(xs, [m - d for m, d in zip(ms, ds)], [m + d for m, d in zip(ms, ds)],
                            color=style.color, alpha=0.15, linewidth=0)
    if values:
        margin = max(spread * 0.08, 0.5)
        ax.set_ylim(min(values) - margin, max(values) + margin)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return figure


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG atomically (a reader never sees half a file)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(str(path), buffer.getvalue())
    return Path(path)


def plot_few_shot(results: FewShotResults, out_dir: str | os.PathLike) -> list[Path]:
    """``<out_dir>/<dataset>.png`` for each dataset and ``average.png`` (the mean over those datasets; a
    method lacking any of them has no point there); returns the paths written (a panel without any point
    gets no file). Each method is drawn alike in all of them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    styles = method_styles(results)
    count = len(results.datasets)
    panels = [(d, display_name(d)) for d in results.datasets]
    panels.append((AVERAGE, f"Average over {count} dataset{'s' if count != 1 else ''}"))
    for dataset, title in panels:
        series = few_shot_series(results, dataset)
        if not series:
            continue
        written.append(save_figure(draw_panel(series, title, results.shots, styles), out / f"{dataset}.png"))
    return written
