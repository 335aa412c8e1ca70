"""Tables as Markdown, CSV or LaTeX.

Markdown and LaTeX print a cell as ``mean ± std (seeds)`` with two decimals (``mean (1)`` for a single
seed, ``mean`` for an average over datasets), a missing run as ``–`` and a cell that does not apply as
blank. CSV keeps the numbers apart (``<column>``, ``<column> std``, ``<column> n``) with four decimals;
missing and not-applicable cells are empty, never zero.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from vlprompt.results.tables import Cell, CellValue, Table

FORMATS = ("md", "csv", "latex")
MISSING_MARK = "–"


def format_cell(cell: CellValue, latex: bool = False) -> str:
    if cell is None:
        return "--" if latex else MISSING_MARK
    if not isinstance(cell, Cell):
        return ""
    text = f"{cell.mean:.2f}"
    if cell.n is not None:
        if cell.n > 1 and cell.std is not None:
            text += (r" $\pm$ " if latex else " ± ") + f"{cell.std:.2f}"
        text += f" ({cell.n})"
    return text


def _display_keys(table: Table) -> list[list[str]]:
    """Row keys with a repeated leading key blanked (a dataset is named once per block)."""
    shown, previous = [], None
    for keys, _ in table.rows:
        if len(keys) > 1 and previous is not None and keys[0] == previous:
            shown.append([""] + list(keys[1:]))
        else:
            shown.append(list(keys))
        previous = keys[0]
    return shown


def to_markdown(table: Table) -> str:
    header = table.row_header + table.columns
    align = ["---"] * len(table.row_header) + ["---:"] * len(table.columns)
    lines = [f"### {table.title}", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for keys, (_, cells) in zip(_display_keys(table), table.rows):
        lines.append("| " + " | ".join(keys + [format_cell(c) for c in cells]) + " |")
    if not table.rows:
        lines.append("| (no runs) |" + " |" * (len(header) - 1))
    lines.append("")
    lines += [f"- {note}" for note in _notes(table)]
    return "\n".join(lines).rstrip() + "\n"


def _notes(table: Table) -> list[str]:
    """The table's notes, after the missing-cell legend when a cell is missing."""
    missing = any(cell is None for _, cells in table.rows for cell in cells)
    return [f"{MISSING_MARK}: missing (no run found)."] * missing + list(table.notes)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    spec = "l" * len(table.row_header) + "c" * len(table.columns)
    lines = [f"% {table.title}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(h) for h in table.row_header + table.columns) + r" \\", r"\midrule"]
    previous = None
    for keys, (raw_keys, cells) in zip(_display_keys(table), table.rows):
        if previous is not None and raw_keys[0] != previous and len(raw_keys) > 1:
            lines.append(r"\midrule")
        previous = raw_keys[0]
        row = [latex_escape(k) for k in keys] + [format_cell(c, latex=True) for c in cells]
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% {note}" for note in _notes(table)]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = list(table.row_header)
    for column in table.columns:
        header += [column, f"{column} std", f"{column} n"]
    writer.writerow(header)
    for keys, cells in table.rows:
        row = list(keys)
        for cell in cells:
            if isinstance(cell, Cell):
                row += [f"{cell.mean:.4f}", "" if cell.std is None else f"{cell.std:.4f}",
                        "" if cell.n is None else str(cell.n)]
            else:
                row += ["", "", ""]
        writer.writerow(row)
    return buffer.getvalue()


def render(table: Table, fmt: str) -> str:
    if fmt == "md":
        return to_markdown(table)
    if fmt == "csv":
        return to_csv(table)
    if fmt == "latex":
        return to_latex(table)
    raise ValueError(f'unknown format "{fmt}"; choose from {", ".join(FORMATS)}')


def render_all(tables: Sequence[Table], fmt: str) -> str:
    """Several tables in one text: Markdown and LaTeX one after another; CSV blocks each headed by a
    ``# <title>`` line."""
    parts = []
    for table in tables:
        text = render(table, fmt)
        parts.append(f"# {table.title}\n{text}" if fmt == "csv" else text)
    return "\n".join(parts)
