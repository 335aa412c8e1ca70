"""Reading results out of Dassl-style ``log.txt`` files, as ``parse_test_res.py`` does, but robustly.

The reference parser accepts a metric line (``* accuracy: 91.8%``) only after its end signal, one exact
line: ``Finish training`` for training logs (Dassl >= 0.6.1) or ``=> result`` for evaluation logs; the
last match wins. Here both wordings of the end of training are accepted (older Dassl printed
``Finished training``), every log of a run folder is read (a re-run writes ``log.txt-<timestamp>``), and
a run that yields nothing comes back with the reason instead of being skipped.
"""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

LOG_NAME = "log.txt"
END_OF_TRAINING = ("Finish training", "Finished training")  # Dassl >= 0.6.1, and before
END_OF_TEST = "=> result"
# Dassl names a second log of the same folder log.txt-YYYY-MM-DD-HH-MM-SS (the start time).
_TIMESTAMPED = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
# The metrics of the result block, keyed as the trainers' ``test_results`` (and run.json) name them.
RESULT_METRICS = {"accuracy": "accuracy", "error": "error_rate", "macro_f1": "macro_f1"}


def metric_pattern(keyword: str) -> re.Pattern:
    """The reference's metric line pattern: ``* <keyword>: <number>%`` (number: digits, ``.eE+-``)."""
    return re.compile(rf"\* {re.escape(keyword)}: ([\.\deE+-]+)%")


def run_logs(directory: str) -> list[str]:
    """The log files of a run folder, oldest first: ``log.txt``, then re-runs by their timestamp.

    Other names starting with ``log.txt-`` (copies renamed by hand) come last, by modification time.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    first = [n for n in names if n == LOG_NAME]
    stamped = sorted(n for n in names if _TIMESTAMPED.match(n))
    others = [n for n in names if n.startswith(LOG_NAME + "-") and n not in stamped]
    others.sort(key=lambda n: os.path.getmtime(os.path.join(directory, n)))
    return [os.path.join(directory, n) for n in first + stamped + others]


def read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read().splitlines()


@dataclass
class LogResult:
    """What one log file gave: ``values`` (keyword → number) or, when empty, ``reason``."""

    path: str
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def end_signals(test_log: bool | None) -> tuple[str, ...]:
    """``--test-log``: the result block; training logs: either wording of the end of training;
    None (unknown kind of run): any of them."""
    if test_log is None:
        return END_OF_TRAINING + (END_OF_TEST,)
    return (END_OF_TEST,) if test_log else END_OF_TRAINING


def parse_log_lines(lines: list[str], path: str, keywords: tuple[str, ...] = ("accuracy",),
                    test_log: bool | None = False) -> LogResult:
    """Metric values printed after the end signal (the last one of each keyword wins), as the reference."""
    signals = end_signals(test_log)
    patterns = {key: metric_pattern(key) for key in keywords}
    started = False
    values: dict[str, float] = {}
    bad: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if line in signals:
            started = True
        if not started:
            continue
        for key, pattern in patterns.items():
            match = pattern.search(line)
            if match:
                try:
                    values[key] = float(match.group(1))
                    bad.pop(key, None)
                except ValueError:
                    bad[key] = match.group(0)
    if values and not bad:
        return LogResult(path, values)
    if bad:
        return LogResult(path, {}, f"unreadable number in {'; '.join(bad.values())!r}")
    if not started:
        wanted = " or ".join(f'"{s}"' for s in signals)
        if test_log:
            hint = "the evaluation did not finish"
        elif test_log is None:
            hint = "the run did not finish"
        else:
            hint = "the run did not finish training, or it is an evaluation log (use --test-log)"
        return LogResult(path, {}, f"no {wanted} line: {hint}")
    return LogResult(path, {}, f'no "* {keywords[0]}: <number>%" line after the end signal')


def parse_log(path: str, keywords: tuple[str, ...] = ("accuracy",), test_log: bool | None = False) -> LogResult:
    try:
        lines = read_lines(path)
    except OSError as err:
        return LogResult(path, {}, f"cannot read: {err}")
    return parse_log_lines(lines, path, keywords, test_log)


@dataclass
class RunParse:
    """The result of a run folder: the log it came from (the newest one with a result), the values, and
    what went wrong (``reason`` when nothing was found; ``notes`` for newer logs without a result)."""

    directory: str
    log: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.values)


def parse_run_dir(directory: str, keywords: tuple[str, ...] = ("accuracy",),
                  test_log: bool | None = False) -> RunParse:
    """Read the newest log of ``directory`` that has a result; older runs count only if newer ones have none."""
    logs = run_logs(directory)
    result = RunParse(directory)
    if not logs:
        result.reason = f"no {LOG_NAME} (or {LOG_NAME}-<timestamp>) in the folder"
        return result
    failures = []
    for path in reversed(logs):
        parsed = parse_log(path, keywords, test_log)
        if parsed.values:
            result.log, result.values = path, parsed.values
            result.notes = [f"{os.path.basename(p)}: {why} (a newer run; using {os.path.basename(path)})"
                            for p, why in failures]
            return result
        failures.append((path, parsed.reason))
    result.reason = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in reversed(failures))
    return result


# ------------------------------------------------------------------------------ what a log says it ran
_STARS = "*" * 12


def _block_after(lines: list[str], title: str) -> list[str] | None:
    """The lines after Dassl's three-line banner ``****`` / ``** <title> **`` / ``****``."""
    for i, line in enumerate(lines):
        if line.strip() == f"** {title} **" and i + 1 < len(lines) and lines[i + 1].startswith(_STARS):
            return lines[i + 2:]
    return None


def read_arguments(lines: list[str]) -> dict[str, str]:
    """The ``key: value`` lines of the ``** Arguments **`` block (values as printed)."""
    block = _block_after(lines, "Arguments")
    args: dict[str, str] = {}
    for line in block or []:
        if line.startswith("*"):
            break
        key, sep, value = line.partition(": ")
        if not sep and line.endswith(":"):
            key, sep, value = line[:-1], ":", ""
        if sep and key and " " not in key:
            args[key] = value
    return args


def read_config_dump(lines: list[str]) -> dict | None:
    """The yacs config printed under ``** Config **`` (up to ``Collecting env info``), as a dict."""
    block = _block_after(lines, "Config")
    if block is None:
        return None
    body = []
    for line in block:
        if line.startswith(("Collecting env info", "** System info")):
            break
        body.append(line)
    try:
        config = yaml.safe_load("\n".join(body))
    except yaml.YAMLError:
        return None
    return _as_written(config) if isinstance(config, dict) else None


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _as_written(value: Any) -> Any:
    """A value of the printed config as the config held it (as ``run.json`` stores it), so a run read from
    its log and one read from its record compare equal: yacs prints tuples as ``(224, 224)``, ``1e-05``
    is no float to YAML 1.1, an empty string reads back as null and None as the word ``None``."""
    if isinstance(value, dict):
        return {key: _as_written(item) for key, item in value.items()}
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    if value == "None":
        return None
    if _FLOAT.match(value):
        return float(value)
    if value[:1] in "([" and value[-1:] in ")]":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return value
        if isinstance(parsed, (tuple, list)):
            return _lists(parsed)
    return value


def _lists(value: Any) -> Any:
    return [_lists(item) for item in value] if isinstance(value, (tuple, list)) else value


def parse_bool(text: str | None) -> bool:
    return str(text).strip().lower() in ("true", "1", "yes")
