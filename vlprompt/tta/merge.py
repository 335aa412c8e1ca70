"""Merge the prediction logs of a sharded TPT run into the result of one run.

    python -m vlprompt.tta.merge OUTPUT_DIR [OUTPUT_DIR ...] [--output-dir MERGED]

Each argument is a prediction log or a folder searched for them (``tpt_predictions/*.jsonl`` at any depth).
Every shard ``i/n`` of a dataset must be present once and complete; the merged predictions give the same
result block, top-5 and reference line as an unsharded run, and with several datasets its summary.
"""

from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import sys
from collections import OrderedDict
from collections.abc import Sequence

from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.engine.logging import setup_console_logging
from vlprompt.errors import UserFileNotFoundError
from vlprompt.tta.records import (
    COMPATIBLE_FIELDS,
    FORMAT,
    PREDICTIONS_DIR,
    PredictionLogError,
    _read_lines,
    parse_shard,
    print_summary,
    report,
    shard_indices,
)


def find_logs(paths: Sequence[str]) -> list[str]:
    """Prediction logs named by ``paths`` (files, or folders searched recursively), sorted, no repeats."""
    found: list[str] = []
    for path in paths:
        if osp.isfile(path):
            found.append(path)
        elif osp.isdir(path):
            found += sorted(glob.glob(osp.join(path, "**", PREDICTIONS_DIR, "*.jsonl"), recursive=True))
        else:
            raise UserFileNotFoundError(f'"{path}" is neither a prediction log nor a folder')
    unique = list(OrderedDict.fromkeys(osp.abspath(p) for p in found))
    if not unique:
        raise UserFileNotFoundError(f"No TPT prediction logs ({PREDICTIONS_DIR}/*.jsonl) under {list(paths)}")
    return unique


def read_log(path: str) -> tuple[dict, list[dict]]:
    lines, _ = _read_lines(path)
    if not lines or lines[0].get("format") != FORMAT:
        raise PredictionLogError(f'"{path}" is not a TPT prediction log (no "{FORMAT}" header)')
    return lines[0], lines[1:]


def merge_logs(paths: Sequence[str]) -> OrderedDict:
    """``{set name: (header, rows sorted by index)}`` from complete, compatible shards (errors otherwise)."""
    groups: OrderedDict[str, list] = OrderedDict()
    for path in find_logs(paths):
        header, rows = read_log(path)
        groups.setdefault(header["set"], []).append((path, header, rows))
    merged: list = []
    for set_name, logs in groups.items():
        first_path, first, _ = logs[0]
        for path, header, _ in logs[1:]:
            differing = [key for key in COMPATIBLE_FIELDS if header.get(key) != first.get(key)]
            if differing:
                raise PredictionLogError(
                    f'"{path}" and "{first_path}" are not shards of one run of {set_name} (they differ in '
                    f"{', '.join(differing)})"
                )
        by_shard: dict = {}
        for path, header, rows in logs:
            shard = parse_shard(header.get("shard", ""), source=f'"{path}" shard')
            if shard in by_shard:
                raise PredictionLogError(f'"{path}" and "{by_shard[shard][0]}" are the same shard of {set_name}')
            expected = shard_indices(header["num_items"], shard)
            have = {int(row["i"]) for row in rows}
            if have != set(expected):
                raise PredictionLogError(
                    f'"{path}" (shard {header.get("shard") or "all"}) has {len(have & set(expected))} of its '
                    f"{len(expected)} images; finish it (rerun the same command) before merging"
                )
            by_shard[shard] = (path, rows)
        if None in by_shard:
            rows = by_shard[None][1]
        else:
            counts = {n for _, n in by_shard}
            if len(counts) != 1:
                raise PredictionLogError(f"Shards of {set_name} split the test set differently: {sorted(counts)} parts")
            n = counts.pop()
            missing = sorted(set(range(n)) - {i for i, _ in by_shard})
            if missing:
                raise PredictionLogError(f"{set_name}: shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing")
            rows = [row for _, shard_rows in by_shard.values() for row in shard_rows]
        merged.append((first.get("order", 0), set_name, dict(first, shard=""), sorted(rows, key=lambda r: r["i"])))
    merged.sort(key=lambda entry: entry[0])
    return OrderedDict((name, (header, rows)) for _, name, header, rows in merged)


def main(argv: Sequence[str] | None = None) -> OrderedDict:
    """Print (and with ``--output-dir`` write) the merged results; returns ``{set: metrics}``."""
    parser = argparse.ArgumentParser(description="Merge the prediction logs of a sharded TPT run.")
    parser.add_argument("paths", nargs="+", help="prediction logs or folders holding them")
    parser.add_argument("--output-dir", default="", help="write merged logs and tpt_results.json here")
    args = parser.parse_args(argv)
    setup_console_logging()  # the result block it prints is logged, as a run's

    from vlprompt.engine.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.OUTPUT_DIR = args.output_dir or cfg.OUTPUT_DIR
    results: OrderedDict = OrderedDict()
    settings = None
    logs = find_logs(args.paths)
    if args.output_dir:  # an earlier merge's output is not one of the shards
        own = osp.join(osp.abspath(args.output_dir), "")
        logs = [path for path in logs if not path.startswith(own)]
    for set_name, (header, rows) in merge_logs(logs).items():
        classnames = header.get("classnames") or []
        lab2cname = dict(enumerate(classnames)) if classnames else None
        results[set_name] = report(rows, header["num_classes"], cfg, set_name, lab2cname)
        settings = header.get("settings_detail") or {}
        if args.output_dir:
            out = osp.join(args.output_dir, PREDICTIONS_DIR, f"{set_name}.jsonl")
            text = json.dumps(header) + "\n" + "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
            atomic_write_text(out, text)
    if len(results) > 1:
        print_summary(results, settings.get("steps", 1), settings.get("lr", 5e-3), settings.get("n_views", 64))
    if args.output_dir:
        payload = {name: dict(metrics) for name, metrics in results.items()}
        atomic_write_text(osp.join(args.output_dir, "tpt_results.json"), json.dumps(payload, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
