"""The tables command: ``python -m vlprompt.tables OUTPUT_ROOT [--protocol P] [--format md|csv|latex]``.

Tables go to stdout (or one file per table with ``--output-dir``); the runs that could not be read and
why, and any duplicate runs left out, go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.results.render import FORMATS, render, render_all
from vlprompt.results.runs import collect_runs
from vlprompt.results.tables import IN_NO_TABLE, TABLE_KINDS, build_tables, few_shot_results

PROTOCOL_ALIASES = {
    "all": TABLE_KINDS, "few_shot": ("few_shot",), "few-shot": ("few_shot",), "fewshot": ("few_shot",),
    "base2new": ("base2new",), "base-to-new": ("base2new",), "b2n": ("base2new",),
    "cross_dataset": ("cross_dataset",), "cross-dataset": ("cross_dataset",), "xd": ("cross_dataset",),
    "dg": ("dg",), "domain_generalization": ("dg",), "domain-generalization": ("dg",), "tpt": ("tpt",),
    "tta": ("tta",), "test-time": ("tta",), "test_time": ("tta",),
}
EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex"}


def _list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.tables",
        description="Build the tables papers print (few-shot, base-to-new, cross-dataset, domain generalisation, "
                    "TPT, and the test-time methods with top-1, ECE and seconds per image) from the runs under "
                    "output folders (run.json records, else log.txt).",
    )
    parser.add_argument("roots", nargs="+", help="output folder(s) searched recursively for runs")
    parser.add_argument("--protocol", default="all", choices=sorted(PROTOCOL_ALIASES),
                        help="which table(s); default: every table that has runs")
    parser.add_argument("--format", default="md", choices=FORMATS, help="md (default), csv or latex")
    parser.add_argument("--metric", default="accuracy", help="run metric to tabulate (accuracy, macro_f1, ...)")
    parser.add_argument("--label-by", default="trainer",
                        help="comma-separated run fields or config keys naming a row, e.g. "
                             "trainer,backbone or trainer,TRAINER.COOP.CSC (default: trainer)")
    parser.add_argument("--vary-by-column", default=None, metavar="KEYS",
                        help="comma-separated config keys that may change from column to column of one row "
                             "(never within a cell), e.g. OPTIM.MAX_EPOCH for CoOp's 50/100/200 epochs by shots; "
                             "by default runs that differ in any setting but the seed are in different rows")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated datasets (DATASET.NAME) to show, in this order; missing runs "
                             "show as missing (default: every dataset that has runs)")
    parser.add_argument("--source", default="ImageNet", help="training dataset of cross-dataset/DG tables")
    parser.add_argument("--output-dir", default=None, help="write <table>.<md|csv|tex> files here")
    parser.add_argument("--plot", default=None, metavar="DIR",
                        help="also draw the few-shot curves (one PNG per dataset and the average) into DIR")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when any run could not be read")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    collection = collect_runs(args.roots)
    for problem in collection.problems:
        print(f"Could not read {problem}", file=sys.stderr)
    label_by = _list(args.label_by) or ["trainer"]
    datasets = _list(args.datasets)
    kinds = PROTOCOL_ALIASES[args.protocol]
    vary = _list(args.vary_by_column) or []
    tables = build_tables(collection.runs, kinds, datasets, label_by, args.metric, args.source, vary=vary)
    for note in collection.notes:
        print(f"Note: {note}", file=sys.stderr)
    unshown = sorted({run.directory for run in collection.runs if run.protocol in IN_NO_TABLE})
    if unshown and args.protocol == "all":
        print(f"Note: {len(unshown)} run(s) trained on all the data (protocol full) are in no table, e.g. "
              f"{unshown[0]}", file=sys.stderr)
    if not tables:
        wanted = "any table" if args.protocol == "all" else f"a {args.protocol} table"
        print(f"No runs for {wanted} under {', '.join(args.roots)} ({len(collection.runs)} runs read)",
              file=sys.stderr)
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        for table in tables:
            counts[table.kind] = counts.get(table.kind, 0) + 1
            suffix = "" if counts[table.kind] == 1 else f"_{counts[table.kind]}"
            path = out / f"{table.kind}{suffix}.{EXTENSIONS[args.format]}"
            atomic_write_text(path, render(table, args.format))
            print(f"Wrote {path}", file=sys.stderr)
    elif tables:
        sys.stdout.write(render_all(tables, args.format))
    plotted = []
    if args.plot:
        from vlprompt.results.plots import plot_few_shot

        results = few_shot_results(collection.runs, datasets, label_by, args.metric, vary=vary)
        plotted = plot_few_shot(results, args.plot)
        for path in plotted:
            print(f"Wrote {path}", file=sys.stderr)
        if not plotted:
            print("No few-shot runs to plot", file=sys.stderr)
    if not tables and not plotted:
        return 1
    return 1 if args.strict and collection.problems else 0
