"""``parse_test_res.py``: the reference's options and output, over seed folders' logs.

What is printed on stdout is the reference's (``Parsing files in ...``, ``file: <log>. accuracy: x%.``,
the ``Summary of directory`` block, ``Average performance`` with ``--multi-exp``). Unlike the reference
it also reads ``Finished training`` logs and re-runs' ``log.txt-<timestamp>`` (the newest log with a
result counts), and lists on stderr every folder it could not parse with the reason, instead of
skipping it silently or stopping at the first stray file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlprompt.engine.fingerprint import SEED_KEY, describe_differences, result_settings
from vlprompt.results.logs import RunParse, parse_run_dir, read_config_dump, read_lines


def compute_ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval as the reference computes it: 1.96·std/√n (population std)."""
    return float(1.96 * np.std(values) / np.sqrt(len(values)))


def listdir_nohidden(path: str) -> list[str]:
    return sorted(name for name in os.listdir(path) if not name.startswith("."))


@dataclass
class DirectorySummary:
    """The runs of one experiment folder: parsed ones, failed ones, and mean/spread of the keyword."""

    directory: str
    keyword: str
    parsed: list[RunParse] = field(default_factory=list)
    failed: list[RunParse] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def values(self) -> list[float]:
        return [run.values[self.keyword] for run in self.parsed]

    def mean(self) -> float:
        return float(np.mean(self.values))

    def spread(self, ci95: bool = False) -> float:
        return compute_ci95(self.values) if ci95 else float(np.std(self.values))


def parse_directory(directory: str, keyword: str = "accuracy", test_log: bool = False) -> DirectorySummary:
    """Parse every (non-hidden) sub-folder of ``directory`` as one run, e.g. ``seed1``, ``seed2``, ..."""
    summary = DirectorySummary(directory, keyword)
    for name in listdir_nohidden(directory):
        path = os.path.join(directory, name)
        if not os.path.isdir(path):
            summary.skipped.append(path)
            continue
        run = parse_run_dir(path, (keyword,), test_log)
        (summary.parsed if run.ok else summary.failed).append(run)
    return summary


def print_summary(summary: DirectorySummary, ci95: bool) -> None:
    """The reference's per-run lines and summary block (stdout)."""
    for run in summary.parsed:
        print(f"file: {run.log}. {summary.keyword}: {run.values[summary.keyword]:.2f}%. ")
    print("===")
    print(f"Summary of directory: {summary.directory}")
    print(f"* {summary.keyword}: {summary.mean():.2f}% +- {summary.spread(ci95):.2f}%")
    print("===")


def run_settings(run: RunParse) -> dict | None:
    """The settings of a parsed run but its seed (``vlprompt.engine.fingerprint``), from the config its
    ``run.json`` stores or, without one, the config printed at the top of the log read; None if neither."""
    config = None
    record = os.path.join(run.directory, "run.json")
    if os.path.isfile(record):
        try:
            with open(record, encoding="utf-8") as handle:
                config = json.load(handle).get("config")
        except (OSError, ValueError, AttributeError):
            config = None
    if not isinstance(config, dict) and run.log:
        try:
            config = read_config_dump(read_lines(run.log))
        except OSError:
            config = None
    return result_settings(config, exclude=(SEED_KEY,)) if isinstance(config, dict) and config else None


def mixed_settings_notes(summary: DirectorySummary) -> list[str]:
    """One note per seed folder whose settings differ from the first one's in more than the seed: the
    reference averages them anyway (and so does stdout here), the note says what was mixed."""
    known = [(os.path.basename(run.directory), settings) for run in summary.parsed
             if (settings := run_settings(run)) is not None]
    if not known:
        return []
    first_name, first = known[0]
    return [f"{summary.directory}: {name} has other settings than {first_name}, yet is averaged with it:\n"
            + describe_differences(first, settings, first_name=first_name, second_name=name)
            for name, settings in known[1:] if settings != first]


def report_problems(summary: DirectorySummary) -> None:
    """What could not be used, and why, and seed folders of other settings (stderr, so stdout stays the
    reference's)."""
    for run in summary.failed:
        print(f"Could not parse {run.directory}: {run.reason}", file=sys.stderr)
    for run in summary.parsed:
        for note in run.notes:
            print(f"Note: {run.directory}: {note}", file=sys.stderr)
    for path in summary.skipped:
        print(f"Skipped {path}: not a run folder", file=sys.stderr)
    for note in mixed_settings_notes(summary):
        print(f"Note: {note}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Average the test results in log.txt over seed folders.")
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95\% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any run folder could not be parsed")
    return parser


def run_directory(directory: str, args: argparse.Namespace) -> DirectorySummary:
    print(f"Parsing files in {directory}")
    summary = parse_directory(directory, args.keyword, args.test_log)
    report_problems(summary)
    if summary.parsed:
        print_summary(summary, args.ci95)
    else:
        print(f"Nothing found in {directory}", file=sys.stderr)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``parse_test_res.py``; returns the exit status (1: nothing found, or --strict and a
    folder failed)."""
    args = build_parser().parse_args(argv)
    if not os.path.isdir(args.directory):
        print(f"{args.directory} is not a directory", file=sys.stderr)
        return 2
    if args.multi_exp:
        summaries = [run_directory(os.path.join(args.directory, name), args)
                     for name in listdir_nohidden(args.directory)
                     if os.path.isdir(os.path.join(args.directory, name))]
        found = [s for s in summaries if s.parsed]
        if found:
            print("Average performance")
            print(f"* {args.keyword}: {np.mean([s.mean() for s in found]):.2f}%")
            left_out = [s.directory for s in summaries if not s.parsed]
            if left_out:
                print(f"Not in the average (nothing found): {', '.join(left_out)}", file=sys.stderr)
    else:
        summaries = [run_directory(args.directory, args)]
        found = [s for s in summaries if s.parsed]
    if not found:
        if args.multi_exp:
            print(f"Nothing found in {args.directory}", file=sys.stderr)
        return 1
    if args.strict and any(s.failed for s in summaries):
        return 1
    return 0
