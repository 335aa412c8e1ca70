"""Per-image TPT predictions on disk: an append-only log per dataset (and shard), resume, shards, and the
result lines computed from the logged predictions.

A log is JSON lines: a header (what was run: dataset, its test items, seed, settings, shard) and one row
per image ``{"i": index, "y": label, "top5": [...]}``, appended and flushed as images finish. A killed run
leaves at most a partial last line, which is dropped when the log is reopened, and continues with the
images not yet in it. Views are drawn from a generator seeded by (seed, index), so an image's prediction
does not depend on the shard, the batch or a resume, and merged shards equal one run.
"""

from __future__ import annotations

import json
import logging
import os
import os.path as osp
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import torch
from tabulate import tabulate

from vlprompt.engine.checkpoint import atomic_write_text
from vlprompt.engine.evaluation import build_evaluator
from vlprompt.errors import UserError, UserValueError, write_error

FORMAT = "vlprompt-tpt-predictions-v1"
PREDICTIONS_DIR = "tpt_predictions"
SHARD_ENV = "VLPROMPT_TPT_SHARD"
# Header fields that must agree between a log and the run that continues it (or the shards being merged).
COMPATIBLE_FIELDS = ("format", "dataset", "split", "num_items", "items_hash", "num_classes", "seed", "settings",
                     "weights_sha256")
# Fields logs written by earlier versions lack: such a log is continued with a warning, not refused.
ADDED_FIELDS = ("weights_sha256",)
# What a failed append leaves intact.
APPEND_INTACT = ("the predictions logged before are intact; free some space and run the same command again "
                 "to continue")
log = logging.getLogger(__name__)


class PredictionLogError(UserError, ValueError):
    """A prediction log that cannot be continued or merged; the message names the file and the fix."""


def parse_shard(text: str, source: str = "TRAINER.TPT.SHARD") -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) → ``(i, n)``; empty → None (the whole test set)."""
    text = (text or "").strip()
    if not text:
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise UserValueError(f'{source} is "{text}"; write it as i/n with 0 <= i < n (e.g. 0/4 is the first of four)')
    return int(match.group(1)), int(match.group(2))


def shard_from_config(value: str) -> tuple[int, int] | None:
    """The shard from ``TRAINER.TPT.SHARD``, else from the ``VLPROMPT_TPT_SHARD`` environment variable."""
    if value and value.strip():
        return parse_shard(value)
    return parse_shard(os.environ.get(SHARD_ENV, ""), source=SHARD_ENV)


def shard_indices(total: int, shard: tuple[int, int] | None) -> list[int]:
    """The test items a shard evaluates: every n-th from i (balanced over class-ordered splits)."""
    if shard is None:
        return list(range(total))
    i, n = shard
    return list(range(i, total, n))


def shard_name(shard: tuple[int, int] | None) -> str:
    return "" if shard is None else f"{shard[0]}/{shard[1]}"


def prediction_path(output_dir: str, set_name: str, shard: tuple[int, int] | None) -> str:
    suffix = "" if shard is None else f".shard{shard[0]}of{shard[1]}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", set_name)
    return osp.join(output_dir, PREDICTIONS_DIR, f"{safe}{suffix}.jsonl")


def _read_lines(path: str) -> tuple[list[dict], int]:
    """Parsed lines of ``path`` and the byte length of its complete lines (a torn last line is not counted)."""
    with open(path, "rb") as handle:
        data = handle.read()
    end = data.rfind(b"\n") + 1
    lines = []
    for number, raw in enumerate(data[:end].splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError as err:
            raise PredictionLogError(f"{path}:{number}: not a JSON line ({err}); the log is damaged") from err
    return lines, end


class PredictionLog:
    """The predictions of one dataset (one shard of it): ``done`` maps item index → row.

    With ``path`` None everything stays in memory (no output directory).
    """

    def __init__(self, path: str | None, header: dict) -> None:
        self.path = path
        self.header = dict(header, format=FORMAT)
        self.done: dict[int, dict] = {}
        if path is None:
            return
        if osp.exists(path):
            lines, end = _read_lines(path)
            if not lines:
                self._create()
                return
            self._check(lines[0])
            for row in lines[1:]:
                self.done[int(row["i"])] = row
            if end != osp.getsize(path):  # a killed run tore its last line: drop it before appending
                with open(path, "r+b") as handle:
                    handle.truncate(end)
        else:
            self._create()

    def _create(self) -> None:
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.header) + "\n")

    def _check(self, saved: dict) -> None:
        unrecorded = [key for key in ADDED_FIELDS if key not in saved and self.header.get(key) is not None]
        if unrecorded:
            log.warning(f'"{self.path}" was written before vlprompt recorded {", ".join(unrecorded)}; '
                        "continuing it without checking that")
        differing = [key for key in COMPATIBLE_FIELDS + ("shard",)
                     if saved.get(key) != self.header.get(key) and key not in unrecorded]
        if differing:
            details = "; ".join(f"{key}: log {saved.get(key)!r} vs this run {self.header.get(key)!r}" for key in differing)
            raise PredictionLogError(
                f'"{self.path}" holds predictions of a different run ({details}). Use another --output-dir, '
                "or delete the file to start this dataset over."
            )

    def append(self, rows: Sequence[dict]) -> None:
        """Record finished images; on disk before this returns (flushed and synced)."""
        for row in rows:
            self.done[int(row["i"])] = row
        if self.path is None or not rows:
            return
        text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:  # a torn last line is dropped when the log is reopened
            raise write_error(err, self.path, APPEND_INTACT) from err

    def rows(self) -> list[dict]:
        return [self.done[i] for i in sorted(self.done)]


def prediction_row(index: int, label: int, logits: torch.Tensor) -> dict:
    """A log row from the tuned logits ``(n_cls,)`` of one image: its top-5 classes, best first."""
    top = logits.topk(min(5, logits.shape[-1])).indices.tolist()
    return {"i": int(index), "y": int(label), "top5": top}


def topk_accuracy(rows: Sequence[dict], k: int) -> float:
    if not rows:
        return 0.0
    return 100.0 * sum(row["y"] in row["top5"][:k] for row in rows) / len(rows)


def reference_line(set_name: str, top1: float, top5: float) -> str:
    """The reference's per-dataset line (with plain numbers where it printed tensors)."""
    return f"=> Acc. on testset [{set_name}]: @1 {top1:.2f}/ @5 {top5:.2f}"


def report(rows: Sequence[dict], num_classes: int, cfg, set_name: str,
           lab2cname: dict[int, str] | None = None) -> OrderedDict:
    """Print Dassl's result block (top-1, via the evaluator) plus top-5 and the reference's line for
    ``rows``; returns the metrics (percentages)."""
    evaluator = build_evaluator(cfg, lab2cname=lab2cname)
    evaluator.reset()
    if rows:
        labels = torch.tensor([row["y"] for row in rows])
        scores = torch.zeros(len(rows), num_classes)
        scores[torch.arange(len(rows)), torch.tensor([row["top5"][0] for row in rows])] = 1.0
        evaluator.process(scores, labels)
    results = evaluator.evaluate()
    results["top5_accuracy"] = topk_accuracy(rows, 5)
    results["images"] = len(rows)
    log.info(f"* top5_accuracy: {results['top5_accuracy']:.1f}%")
    log.info(reference_line(set_name, results["accuracy"], results["top5_accuracy"]))
    return results


def print_summary(results: OrderedDict[str, dict], steps: int, lr: float, n_views: int) -> None:
    """The reference's closing summary (set ids and top-1, tab-separated) and a table with top-5."""
    log.info("======== Result Summary ========")
    log.info("params: nstep\tlr\tbs")
    log.info(f"params: {steps}\t{lr}\t{n_views}")
    log.info("\t\t [set_id] \t\t Top-1 acc. \t\t Top-5 acc.")
    log.info("".join(f"{name}\t" for name in results) + "\n")
    log.info("".join(f"{metrics['accuracy']:.2f}\t" for metrics in results.values()) + "\n")
    table = [[name, m["images"], f"{m['accuracy']:.2f}", f"{m['top5_accuracy']:.2f}"] for name, m in results.items()]
    if len(results) > 1:
        table.append(["average", "", f"{_mean(r['accuracy'] for r in results.values()):.2f}",
                      f"{_mean(r['top5_accuracy'] for r in results.values()):.2f}"])
    log.info(tabulate(table, headers=["dataset", "images", "top-1", "top-5"]))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
