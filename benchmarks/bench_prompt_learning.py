"""Seconds and peak memory per training step of CoOp and CoCoOp: fast text encoding against the full-length
computation of the reference code, side by side in one run.

    python benchmarks/bench_prompt_learning.py                      # CPU plan (see --help), JSON to stdout
    python benchmarks/bench_prompt_learning.py --device cuda --classes 100,1000 --cocoop-batches 1,4,8
    python benchmarks/bench_prompt_learning.py --backbones vit_b16 --classes 100 --json out.json

A step is what the trainers do per batch: image features from the frozen encoder, text features of the
prompts of every class, cross-entropy, backward to the prompt parameters, an SGD step. An ``eval`` part is a
test batch: logits of the images against every class's prompts, no gradient (CoCoOp: one prompt set per
image). Every result carries the **floor** (the FLOPs really needed: the frozen encoder's forward, and the
text tower over each prompt up to its own end-of-text token with the shared prefix once, forward and, for
a step, backward to the prompts), the FLOPs the mode **executes** (torch's counter, on the warm-up run), the
machine's measured matmul **peak** (wall and CPU time) and its seconds as a multiple of floor / peak. CLIPs of the real
sizes (ViT-B/16, RN50) with random weights, class names the first N of ImageNet's (CLIP's spelling).
Text-encoding modes:

* ``reference``: all 77 positions, every class's prompt computed in full (CoOp's TextEncoder); CoCoOp
  one image per pass, as its per-image loop;
* ``truncated``: positions only up to the last end-of-text token;
* ``fast``: truncated, and the ``[SOS][context]`` positions shared by all classes computed once (the
  default of vlprompt's trainers; CoCoOp also encodes several images per pass).

A mode that does not fit (the reference at 1000 classes) is also given as an estimate from the largest class
count where it ran: its text part is linear in the class count (every prompt runs all 77 positions), so its
FLOPs at C classes are the measured ones plus the text part's times (C/C' - 1), and its seconds scale with
them (marked ``estimated``).

Each (method, backbone, batch, classes) runs in its own process on one set of weights, the modes taking
turns step by step so that a busy machine slows them alike. Peak memory is a mode's first step over what
the model holds: on CUDA the allocator's peak, on CPU the rise of the resident set (VmHWM), under an
address-space cap (--memory-limit-gb) so that a computation that would not fit fails cleanly and is
reported as out of memory. Ratios are given for every size where both fit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch
from common import SPECS, TEXT, flop_counter, image_flops, matmul_gflops, text_floor

MODES = ("reference", "truncated", "fast")
# The reference configs: CoOp 16 generic context tokens; CoCoOp "a photo of a" (4 tokens).
COOP_CFG = {"N_CTX": 16, "CTX_INIT": "", "CSC": False, "CLASS_TOKEN_POSITION": "end", "PREC": "fp32"}
COCOOP_CFG = {"N_CTX": 4, "CTX_INIT": "a photo of a", "PREC": "fp32", "MAX_PROMPTS": 8192}


def build_model(method: str, backbone: str, n_cls: int, device: torch.device, prec: str):
    """The trainer's model (CoOpCLIP / CoCoOpCLIP) on a random-weight CLIP of the real size."""
    from yacs.config import CfgNode as CN

    from vlprompt.clip_backbone import apply_precision, import_clip
    from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES
    from vlprompt.trainers.cocoop import CoCoOpCLIP
    from vlprompt.trainers.coop import CoOpCLIP

    torch.manual_seed(0)
    clip_model = import_clip().model.CLIP(**SPECS[backbone], **TEXT).eval()
    clip_model, _ = apply_precision(clip_model.to(device), prec, device)
    clip_model.requires_grad_(False)
    names = list(IMAGENET_CLASSNAMES[:n_cls])
    if method == "coop":
        return CoOpCLIP(names, clip_model, CN(COOP_CFG)).to(device)
    return CoCoOpCLIP(names, clip_model, CN(COCOOP_CFG)).to(device)


def set_mode(model, mode: str) -> None:
    """Switch the text encoder between the reference computation and the fast paths (same weights)."""
    encoder = model.text_encoder
    encoder.truncate = mode != "reference"
    encoder.share_prefix = mode == "fast"
    if hasattr(model.prompt_learner, "meta_net"):  # CoCoOp: the reference encodes one image per pass
        encoder.max_prompts = model.prompt_learner.n_cls if mode == "reference" else COCOOP_CFG["MAX_PROMPTS"]


def _proc_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(err)


def run_group(group: dict) -> dict:
    """All modes of one (method, backbone, batch, classes), in this process on the same weights and batch.

    Parts: ``step`` is a whole training step; ``text`` the same step on image features computed
    beforehand, i.e. everything the modes change (the frozen image encoder costs the same in all). The
    modes take turns, so a machine that gets busier or quieter meanwhile affects them alike; wall and
    process CPU seconds are both kept (the latter is steadier on a shared machine). The first run of a
    mode and part is its warm-up and its memory measurement (peak over what the model holds); a mode that
    runs out of memory is reported so and the others go on.
    """
    device = torch.device(group["device"])
    if group.get("threads"):
        torch.set_num_threads(group["threads"])
    model = build_model(group["method"], group["backbone"], group["classes"], device, group["prec"])
    learner = model.prompt_learner
    learner.train()
    optim = torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(1)
    batch = group["batch"]
    images = torch.randn(batch, 3, 224, 224, generator=generator).to(device)
    labels = torch.randint(group["classes"], (batch,), generator=generator).to(device)
    with torch.no_grad():
        features = model.image_encoder(images.type(model.dtype))
        features = features / features.norm(dim=-1, keepdim=True)

    per_image = image_flops(model.image_encoder, device)
    text = text_floor(learner.tokenized_prompts.argmax(-1).tolist(), learner.shared_prefix_length,
                      model.image_encoder.output_dim)
    prompt_sets = batch if group["method"] == "cocoop" else 1
    logits_flops = 2 * batch * group["classes"] * model.image_encoder.output_dim

    def floor(part: str) -> int:
        """The part's floor: image forwards (not for ``text``), text forward (+ backward but for ``eval``)."""
        images_part = 0 if part == "text" else batch * per_image
        if part == "eval":
            return images_part + prompt_sets * text["forward"] + logits_flops
        return images_part + prompt_sets * (text["forward"] + text["backward"]) + 2 * logits_flops

    def loss_of(part: str) -> torch.Tensor:
        if part == "eval":
            learner.eval()
            try:
                with torch.no_grad():
                    return model(images).sum()  # logits of the batch (a number only so the caller can discard it)
            finally:
                learner.train()
        if part == "text":
            if group["method"] == "coop":
                logits = model.logit_scale.exp() * features @ model.text_features().t()
            else:
                logits = model.logits_from_features(features)
            return torch.nn.functional.cross_entropy(logits, labels)
        if group["method"] == "coop":
            return torch.nn.functional.cross_entropy(model(images), labels)
        return model(images, labels)  # CoCoOp's model returns the loss in training mode

    def timed(mode: str, part: str) -> tuple[float, float]:
        set_mode(model, mode)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        optim.zero_grad()
        loss = loss_of(part)
        if part != "eval":
            loss.backward()
            optim.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu

    gflops, gflops_cpu = matmul_gflops(device)
    results = {(mode, part): {"status": "ok", "seconds": [], "cpu_seconds": []}
               for mode in group["modes"] for part in group["parts"]}
    for round_index in range(group["warmup"] + group["steps"]):
        for (mode, part), result in results.items():
            if result["status"] != "ok":
                continue
            first = round_index == 0
            if first and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            elif first:
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM (peak resident set) := current size
                base = _proc_kb("VmRSS") * 1024
            try:
                if first:  # the warm-up also counts the FLOPs this mode executes
                    with flop_counter() as counter:
                        wall, cpu = timed(mode, part)
                    result["executed_flops"] = counter.get_total_flops()
                    result["floor_flops"] = floor(part)
                else:
                    wall, cpu = timed(mode, part)
            except (RuntimeError, MemoryError) as err:
                if not _out_of_memory(err):
                    raise
                result.update(status="oom", detail=str(err).splitlines()[0][:200])
                optim.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if first:
                peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _proc_kb("VmHWM") * 1024
                result["peak_memory_mb"] = round((peak - base) / 2**20, 1)
            if round_index >= group["warmup"] or group["warmup"] == 0:
                result["seconds"].append(round(wall, 4))
                result["cpu_seconds"].append(round(cpu, 4))
    for (_, part), result in results.items():
        result["floor_flops"] = floor(part)
        result["image_flops"] = 0 if part == "text" else batch * per_image
        if result["status"] == "ok":
            result["seconds_per_step"] = statistics.median(result["seconds"])
            result["cpu_seconds_per_step"] = statistics.median(result["cpu_seconds"])
    return {"text_positions": int(learner.tokenized_prompts.argmax(-1).max()) + 1, "matmul_gflops": gflops,
            "matmul_gflops_cpu": gflops_cpu,
            "results": [{"mode": mode, "part": part, **result} for (mode, part), result in results.items()]}


def run_isolated(group: dict, memory_limit_gb: float, timeout: float) -> dict:
    """``run_group`` in a fresh process: its own memory (and a crash is a result, not the end of the run).

    Large blocks are mmapped and given back on free (fixed ``MALLOC_MMAP_THRESHOLD_``), so on CPU the
    resident set follows what the tensors occupy and one mode's freed memory does not hide the next's.
    """
    command = [sys.executable, __file__, "--case", json.dumps(group), "--memory-limit-gb", str(memory_limit_gb)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return _failed(group, "timeout", f"over {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = done.stderr.strip().splitlines()
    status = "oom" if done.returncode == -9 or "can't allocate memory" in done.stderr else "error"
    detail = (err[-1] if err else f"exit code {done.returncode}")[:300]
    return _failed(group, status, detail)


def _failed(group: dict, status: str, detail: str) -> dict:
    return {"text_positions": None, "matmul_gflops": 0.0, "matmul_gflops_cpu": 0.0,
            "results": [{"mode": mode, "part": part, "status": status, "detail": detail}
                                                for mode in group["modes"] for part in group["parts"]]}


def against_limit(results: list[dict], peak: float, peak_cpu: float) -> None:
    """Add to every result that ran: executed FLOPs over the floor, and seconds (CPU seconds) as a multiple of
    floor / peak (floor / CPU-time peak)."""
    for r in results:
        if r["status"] != "ok" or not r.get("floor_flops"):
            continue
        r["x_limit"] = round(r["seconds_per_step"] * peak * 1e9 / r["floor_flops"], 3)
        r["cpu_x_limit"] = round(r["cpu_seconds_per_step"] * peak_cpu * 1e9 / r["floor_flops"], 3)
        if r.get("executed_flops"):
            r["executed_x_floor"] = round(r["executed_flops"] / r["floor_flops"], 3)


def estimate_missing(results: list[dict]) -> None:
    """Give a mode that did not fit at C classes an estimate from the largest C' < C where it ran: its image part
    is fixed and, for the reference (all 77 positions for every class), the rest grows as C/C'; its seconds
    scale with its FLOPs. Marked ``estimated_from_classes``."""
    done = {}
    for r in results:
        if r["status"] == "ok" and r.get("executed_flops"):
            done.setdefault((r["method"], r["backbone"], r["batch"], r["part"], r["mode"]), []).append(r)
    for r in results:
        if r["status"] == "ok" or r["mode"] != "reference":
            continue
        smaller = [d for d in done.get((r["method"], r["backbone"], r["batch"], r["part"], r["mode"]), [])
                   if d["classes"] < r["classes"]]
        if not smaller:
            continue
        d = max(smaller, key=lambda x: x["classes"])
        fixed = d["image_flops"]
        flops = fixed + (d["executed_flops"] - fixed) * r["classes"] / d["classes"]
        scale = flops / d["executed_flops"]
        r.update(estimated_from_classes=d["classes"], executed_flops=flops,
                 seconds_per_step=d["seconds_per_step"] * scale, cpu_seconds_per_step=d["cpu_seconds_per_step"] * scale)


def ratios(results: list[dict]) -> list[dict]:
    """Reference ÷ other mode per (method, backbone, batch, classes, part) where both ran (or the reference's
    estimate, when it did not fit: then marked so)."""
    def key(r: dict) -> tuple:
        return r["method"], r["backbone"], r["batch"], r["classes"], r["part"]

    reference = {key(r): r for r in results if r["mode"] == "reference"}
    out = []
    for r in results:
        ref = reference.get(key(r))
        if r["mode"] == "reference" or ref is None:
            continue
        row = {"method": r["method"], "backbone": r["backbone"], "batch": r["batch"], "classes": r["classes"],
               "part": r["part"], "mode": r["mode"]}
        if r["status"] == "ok" and (ref["status"] == "ok" or "estimated_from_classes" in ref):
            row["speedup"] = round(ref["seconds_per_step"] / r["seconds_per_step"], 2)
            row["cpu_speedup"] = round(ref["cpu_seconds_per_step"] / r["cpu_seconds_per_step"], 2)
            if ref.get("executed_flops") and r.get("executed_flops"):
                row["flop_ratio"] = round(ref["executed_flops"] / r["executed_flops"], 2)
            if ref["status"] == "ok":
                row["memory_ratio"] = round(ref["peak_memory_mb"] / max(r["peak_memory_mb"], 1e-3), 2)
            else:
                row["note"] = (f"reference {ref['status']}: estimated from its run at {ref['estimated_from_classes']} "
                               "classes (FLOPs measured there, text part scaled with the class count)")
        else:
            row["note"] = f"reference {ref['status']}, {r['mode']} {r['status']}"
        out.append(row)
    return out


def largest_common(results: list[dict]) -> list[dict]:
    """Per (method, backbone, batch, part): the largest class count at which every mode ran."""
    groups: dict[tuple, dict[int, set]] = {}
    for r in results:
        key = (r["method"], r["backbone"], r["batch"], r["part"])
        groups.setdefault(key, {}).setdefault(r["classes"], set()).add(r["status"])
    out = []
    for (method, backbone, batch, part), by_classes in groups.items():
        fitting = [n for n, statuses in by_classes.items() if statuses == {"ok"}]
        out.append({"method": method, "backbone": backbone, "batch": batch, "part": part,
                    "largest_classes_all_modes_fit": max(fitting) if fitting else None})
    return out


def print_table(report: dict) -> None:
    """The results as a Markdown table (to stderr, what the README shows)."""
    out = sys.stderr
    print(f"\nPrompt learning, {report['device']}, {report['threads']} thread(s), matmul peak "
          f"{report['matmul_gflops']:.0f} GFLOP/s wall, {report['matmul_gflops_cpu']:.0f} per CPU-s", file=out)
    print("| method | backbone | batch | classes | part | mode | floor GFLOP | executed GFLOP (x floor) | s (CPU s) | "
          "x limit (CPU) | peak MB | reference / this (CPU) |", file=out)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", file=out)
    speedups = {(r["method"], r["backbone"], r["batch"], r["classes"], r["part"], r["mode"]): r
                for r in report["ratios"]}
    for r in report["results"]:
        name = (r["method"], r["backbone"], r["batch"], r["classes"], r["part"], r["mode"])
        floor = f"{r['floor_flops'] / 1e9:.0f}" if r.get("floor_flops") else "–"
        if r["status"] != "ok" and "estimated_from_classes" not in r:
            print(f"| {' | '.join(map(str, name))} | {floor} | {r['status']} ||||||", file=out)
            continue
        executed = (f"{r['executed_flops'] / 1e9:.0f} ({r['executed_flops'] / r['floor_flops']:.2f}x)"
                    if r.get("executed_flops") else "–")
        estimated = f" (estimated from {r['estimated_from_classes']} classes; {r['status']} here)" \
            if "estimated_from_classes" in r else ""
        limits = f"{r['x_limit']:.2f}x ({r['cpu_x_limit']:.2f}x)" if "x_limit" in r else "–"
        ratio = speedups.get(name, {})
        speedup = f"{ratio['speedup']:.2f}x ({ratio['cpu_speedup']:.2f}x)" if "speedup" in ratio else ""
        print(f"| {' | '.join(map(str, name))} | {floor} | {executed} | {r['seconds_per_step']:.1f} "
              f"({r['cpu_seconds_per_step']:.1f}){estimated} | {limits} | {r.get('peak_memory_mb', '–')} | {speedup} |",
              file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prec", default=None, help="fp16 or fp32 (default: fp16 on CUDA, as the configs; fp32 on CPU)")
    parser.add_argument("--backbones", default="vit_b16,rn50")
    parser.add_argument("--methods", default="coop,cocoop")
    parser.add_argument("--classes", default="100", help="comma-separated class counts (first N ImageNet names)")
    parser.add_argument("--coop-batch", type=int, default=32)
    parser.add_argument("--cocoop-batches", default="1,4")
    parser.add_argument("--modes", default="reference,fast", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--parts", default="step,text", help="step (whole training step), text (all but "
                        "the frozen image encoder) and/or eval (a test batch's logits, no gradient)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--memory-limit-gb", type=float, default=8.0,
                        help="CPU: address-space cap per measurement, so an oversized run fails cleanly (0: none)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one measurement
    args = parser.parse_args(argv)

    if args.case:
        if args.memory_limit_gb > 0 and json.loads(args.case)["device"] == "cpu":
            import resource

            limit = int(args.memory_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(run_group(json.loads(args.case))))
        return 0

    prec = args.prec or ("fp16" if args.device.startswith("cuda") else "fp32")
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")
    plan = []
    for backbone in args.backbones.split(","):
        for method in args.methods.split(","):
            batches = [args.coop_batch] if method == "coop" else [int(b) for b in args.cocoop_batches.split(",")]
            for batch in batches:
                for classes in (int(c) for c in args.classes.split(",")):
                    plan.append({"method": method, "backbone": backbone, "batch": batch, "classes": classes,
                                 "modes": modes, "parts": args.parts.split(","), "device": args.device, "prec": prec, "warmup": args.warmup,
                                 "steps": args.steps, "threads": args.threads})
    results, peak, peak_cpu, load_start = [], 0.0, 0.0, os.getloadavg()
    for group in plan:
        started = time.perf_counter()
        outcome = run_isolated(group, args.memory_limit_gb, args.timeout)
        peak, peak_cpu = max(peak, outcome["matmul_gflops"]), max(peak_cpu, outcome["matmul_gflops_cpu"])
        shared = {key: value for key, value in group.items() if key not in ("modes", "parts")}
        for got in outcome["results"]:
            results.append({**shared, "text_positions": outcome["text_positions"], **got})
            shown = (f"{got['seconds_per_step']:.2f} s ({got['cpu_seconds_per_step']:.2f} s CPU), "
                     f"peak {got['peak_memory_mb']:.0f} MB" if got["status"] == "ok"
                     else f"{got['status']}: {got.get('detail', '')}")
            print(f"{group['method']:6} {group['backbone']:7} batch {group['batch']:3} classes {group['classes']:5} "
                  f"{got['part']:4} {got['mode']:9} {shown}", file=sys.stderr)
        print(f"  ({time.perf_counter() - started:.0f} s wall)", file=sys.stderr)
    against_limit(results, peak, peak_cpu)
    estimate_missing(results)
    report = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": args.threads or torch.get_num_threads(), "prec": prec,
        "matmul_gflops": peak, "matmul_gflops_cpu": peak_cpu, "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(), "note": "load averages are of the whole machine (other jobs included)",
        "warmup": args.warmup, "steps": args.steps, "results": results, "ratios": ratios(results),
        "largest_common": largest_common(results),
    }
    print_table(report)
    text = json.dumps(report, indent=2)
    if args.json:
        from vlprompt.engine.checkpoint import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
