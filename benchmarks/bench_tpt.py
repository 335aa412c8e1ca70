"""TPT cost per test image against the hardware's limit, and side by side with the original TPT code.

    python benchmarks/bench_tpt.py                                  # CPU, 1 thread: RN50 and ViT-B/16, 37/200/1000 classes
    python benchmarks/bench_tpt.py --reference /tmp/TPT             # + the original TPT code, interleaved
    python benchmarks/bench_tpt.py --archs rn50 --classes 37 --out benchmarks/results/tpt_cpu.json
    python benchmarks/bench_tpt.py --device cuda --batch-images 8   # GPU (amp, several images tuned at once)
    python benchmarks/bench_tpt.py --table benchmarks/results/tpt_cpu.json
    python benchmarks/bench_tpt.py --family --classes 200                # TPT, C-TPT, Zero, MTA, TDA: s/image, FLOPs

Every case is a CLIP of the real size with random weights (no download; the same seed gives the same weights
in the original code's model class), the first N ImageNet class names (real token lengths), 64 random views
per image, TPT's defaults (one step, 10 % of views, "a photo of a"). Per case it reports:

* the **floor**: the FLOPs one image really needs: the 64 view encodes, then per step the text tower forward
  and backward over each class prompt up to its own end-of-text token with the common prefix computed once,
  then the prediction's text forward (``prompt_floor_flops``; matrix products only, 2 per multiply-add);
* the FLOPs each implementation **executes** (torch's FLOP counter, on one image after the timed ones);
* this machine's **peak**: the best fp32 matrix-multiply rate measured (2048², one thread unless --threads);
* seconds per image (wall and process CPU; the minimum over the timed images and repeats; the first image
  of every process is a warm-up and not timed), and both as a multiple of the **limit** floor / peak;
* minor page faults and system time per image, peak resident memory of the process.

``ours`` is vlprompt's TPT as the harness runs it (views encoded once through the folded tower in
heap-sized chunks, the packed text tower, the first step's text forward shared by images).
``--reference DIR`` runs the original TPT code (github.com/azshue/TPT) from a checkout at DIR, unmodified:
this script calls its ``ClipTestTimeTuning`` and ``test_time_tuning`` with device ``cpu`` and hands it the
random CLIP in place of ``clip.load`` (its only two CPU problems; nothing of it is copied here).
``straightforward`` is vlprompt's own reference computation (vlprompt.tta.straightforward). Each
measurement runs in its own process (its own peak memory); implementations take turns case by case, so
a machine that gets busier slows them alike. A run whose memory, extrapolated from a smaller class count,
would not fit is skipped and reported so.

``--family`` measures the test-time methods side by side instead (the section at the end of this file):
per test image the seconds and the FLOPs (forward and backward, counted by torch's FlopCounterMode) of
TPT, C-TPT, Zero, MTA and TDA on the same views, encoded as the harness encodes them; the class text
features Zero, MTA and TDA compute once per dataset are timed apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import vlprompt  # noqa: F401, I001 - before torch/clip: installs the torchvision shim
import torch
from common import RESOLUTION, SPECS, TEXT, flop_counter, image_flops, matmul_gflops, text_floor
from common import sync as _sync

ARCH_NAMES = {"vit_b16": "ViT-B/16", "rn50": "RN50"}
IMPLS = ("ours", "reference", "straightforward")
CTX_INIT = "a photo of a"


def class_names(n: int) -> list[str]:
    """The first ``n`` ImageNet class names (CLIP's spelling): real token lengths, hence real truncation."""
    from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES[:n])


def random_clip(clip_module, arch: str):
    """``clip_module.model.CLIP`` of ``arch``'s real size with the benchmark's random weights (seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = clip_module.model.CLIP(**SPECS[arch], **TEXT)
    return model.eval().float()


def build_clip(arch: str, device: torch.device):
    from vlprompt.clip_backbone import import_clip

    return random_clip(import_clip(), arch).to(device).requires_grad_(False)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def floor_flops(per_view: int, views: int, eot: list[int], shared: int, steps: int, embed_dim: int) -> dict:
    """The floor of one TPT image (see the module docstring), and its image and text parts."""
    text = text_floor(eot, shared, embed_dim)
    text_total = steps * (text["forward"] + text["backward"]) + text["forward"]
    return {"image": per_view * views, "text": text_total, "total": per_view * views + text_total}


# ------------------------------------------------------------------------------------ implementations
PRECISIONS = {"amp": "float16", "bf16": "bfloat16", "fp32": ""}  # autocast dtype of each --prec


def ours(spec: dict, device: torch.device, model: torch.nn.Module | None = None):
    """vlprompt's TPT as the harness runs it; returns (run(views (B, N, 3, R, R)) -> predictions, model, eot,
    shared prefix). ``spec["prec"]``: ``amp`` (fp16 autocast and loss scaler, as the reference on a GPU;
    the default on CUDA), ``bf16`` or ``fp32`` (the default on the CPU). ``model``: another CLIP to use."""
    from vlprompt.modeling import PromptTextEncoder, normalize
    from vlprompt.tta.sources import WordsContext
    from vlprompt.tta.tuner import PromptTuner, TPTSettings, ViewEncoder

    prec = spec.get("prec") or ("amp" if device.type == "cuda" else "fp32")
    amp_dtype = PRECISIONS[prec]
    model = build_clip(spec["arch"], device) if model is None else model
    settings = TPTSettings(n_views=spec["views"], steps=spec["steps"], amp=bool(amp_dtype),
                           amp_dtype=amp_dtype or "float16")
    source = WordsContext(CTX_INIT)
    learner = source.learner(class_names(spec["classes"]), model)
    scaler = torch.amp.GradScaler(device.type, init_scale=1000) if prec == "amp" else None
    tuner = PromptTuner(learner, PromptTextEncoder(model), model.logit_scale.exp(), settings, scaler)
    encoder = ViewEncoder(model.visual, spec.get("resolution", RESOLUTION), device, max_chunk=256, amp=bool(amp_dtype),
                          amp_dtype=getattr(torch, amp_dtype or "float16"))

    def run(views: torch.Tensor, with_logits: bool = False):
        """Predictions of the original views of ``views`` (and their logits ``(B, n_cls)`` with ``with_logits``)."""
        features = encoder(views.to(device))
        result = tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=True)
        predictions = result.logits.argmax(-1).tolist()
        return (predictions, result.logits) if with_logits else predictions

    return run, model, learner.tokenized_prompts.argmax(-1).tolist(), learner.shared_prefix_length


def straightforward(spec: dict, device: torch.device):
    """vlprompt's reference computation (every view re-encoded per step, 77 positions, one image at a time)."""
    from vlprompt.tta.sources import WordsContext
    from vlprompt.tta.straightforward import StraightforwardTPT
    from vlprompt.tta.tuner import TPTSettings

    model = build_clip(spec["arch"], device)
    learner = WordsContext(CTX_INIT).learner(class_names(spec["classes"]), model)
    tpt = StraightforwardTPT(model, learner, TPTSettings(n_views=spec["views"], steps=spec["steps"]))
    amp = device.type == "cuda"

    def run(views: torch.Tensor) -> list[int]:
        predictions = []
        for image in views:
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                logits, _ = tpt(image.to(device))
            predictions.append(int(logits.argmax()))
        return predictions

    return run, model, learner.tokenized_prompts.argmax(-1).tolist(), learner.shared_prefix_length


def reference(spec: dict, device: torch.device):
    """The original TPT code from the checkout ``spec["reference"]``: its model class, prompt learner,
    ``test_time_tuning`` and prediction, as its ``test_time_adapt_eval`` runs them per image."""
    import copy
    from argparse import Namespace

    sys.path.insert(0, spec["reference"])  # its ``clip`` package shadows the installed one in this process
    warnings.filterwarnings("ignore")  # its torch.cuda.amp calls warn on every use without CUDA
    import clip as tpt_clip
    import tpt_classification
    from clip import custom_clip

    model = random_clip(tpt_clip, spec["arch"]).to(device)
    embed_dim = model.text_projection.shape[1]
    # Local weights: the same random CLIP in place of clip.load (which downloads OpenAI's).
    custom_clip.load = lambda *args, **kwargs: (model, embed_dim, None)
    tta = custom_clip.ClipTestTimeTuning(str(device), class_names(spec["classes"]), None, arch=ARCH_NAMES[spec["arch"]],
                                         n_ctx=4, ctx_init=CTX_INIT.replace(" ", "_"))
    for name, param in tta.named_parameters():
        if "prompt_learner" not in name:
            param.requires_grad_(False)
    tta.eval()
    optimizer = torch.optim.AdamW(tta.prompt_learner.parameters(), 5e-3)
    optim_state = copy.deepcopy(optimizer.state_dict())
    scaler = torch.cuda.amp.GradScaler(init_scale=1000)
    args = Namespace(cocoop=False, tta_steps=spec["steps"], selection_p=0.1)

    def run(views: torch.Tensor) -> list[int]:
        predictions = []
        for image_views in views:
            images = image_views.to(device)
            with torch.no_grad():
                tta.reset()
            optimizer.load_state_dict(optim_state)
            tpt_classification.test_time_tuning(tta, images, optimizer, scaler, args)
            with torch.no_grad(), torch.cuda.amp.autocast():
                output = tta(images[:1])
            predictions.append(int(output.argmax(-1)[0]))
        return predictions

    eot = tta.prompt_learner.tokenized_prompts.argmax(-1).tolist()
    return run, model, eot, 1 + tta.prompt_learner.n_ctx


BUILDERS = {"ours": ours, "reference": reference, "straightforward": straightforward}


def worker(spec: dict) -> dict:
    """One measurement in this process: ``spec`` = impl, arch, classes, views, steps, images (timed), device,
    threads, batch_images (ours), reference (its directory)."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    peak, peak_cpu = matmul_gflops(device)
    run, model, eot, shared = BUILDERS[spec["impl"]](spec, device)
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else rss_kib("VmRSS") * 1024
    per_view = image_flops(model.visual, device)
    floor = floor_flops(per_view, spec["views"], eot, shared, spec["steps"], model.text_projection.shape[1])
    batch = spec["batch_images"] if spec["impl"] == "ours" else 1
    generator = torch.Generator().manual_seed(1)
    groups = [torch.randn(batch, spec["views"], 3, RESOLUTION, RESOLUTION, generator=generator)
              for _ in range(spec["images"] + 2)]  # warm-up, timed, counted
    predictions = run(groups[0])
    times = []
    for views in groups[1:-1]:
        _sync(device)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu = time.perf_counter(), time.process_time()
        predictions += run(views)
        _sync(device)
        after = resource.getrusage(resource.RUSAGE_SELF)
        times.append({"seconds": (time.perf_counter() - wall) / batch, "cpu_seconds": (time.process_time() - cpu) / batch,
                      "system_seconds": (after.ru_stime - usage.ru_stime) / batch,
                      "minor_faults": (after.ru_minflt - usage.ru_minflt) / batch})
    with flop_counter() as counter:
        predictions += run(groups[-1])
    best = min(times, key=lambda t: t["seconds"])
    peak_rss = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss_kib("VmHWM") * 1024)
    return {**spec, "seconds_per_image": best["seconds"], "cpu_seconds_per_image": min(t["cpu_seconds"] for t in times),
            "system_seconds_per_image": best["system_seconds"], "minor_faults_per_image": best["minor_faults"],
            "all_seconds": [round(t["seconds"], 3) for t in times], "executed_flops": counter.get_total_flops() / batch,
            "floor_flops": floor, "matmul_gflops": peak, "matmul_gflops_cpu": peak_cpu, "peak_memory_mib": peak_rss / 2**20,
            "model_memory_mib": baseline / 2**20, "predictions": predictions,
            "loadavg_end": os.getloadavg()}


def run_one(spec: dict, memory_limit_gb: float) -> dict:
    command = [sys.executable, __file__, "--worker", json.dumps(spec)]
    env = dict(os.environ)
    env.pop("VLPROMPT_HEAP_REUSE", None)
    completed = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                               preexec_fn=_limit_memory(memory_limit_gb) if spec["device"] == "cpu" else None)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        status = "out of memory" if completed.returncode == -9 or "can't allocate memory" in completed.stderr else "failed"
        return {**spec, "skipped": f"{status} (exit {completed.returncode}): {' | '.join(tail)}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _limit_memory(gigabytes: float):
    def apply() -> None:
        if gigabytes > 0:
            limit = int(gigabytes * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def available_mib(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


# ------------------------------------------------------------------------------------------ report
def summarise(case: dict, runs: dict[str, list[dict]], peak: float, peak_cpu: float) -> dict:
    """One case's entry: per implementation its best run and figures against the limit (wall seconds against
    floor / peak, CPU seconds against floor / CPU-time peak)."""
    entry = dict(case)
    for impl, measured in runs.items():
        done = [r for r in measured if "seconds_per_image" in r]
        if not done:
            entry[impl] = {"skipped": measured[-1].get("skipped", "not run")} if measured else {"skipped": "not run"}
            continue
        best = min(done, key=lambda r: r["seconds_per_image"])
        floor = best["floor_flops"]["total"]
        limit = floor / (peak * 1e9)
        cpu_limit = floor / (peak_cpu * 1e9)
        entry[impl] = {
            "seconds_per_image": best["seconds_per_image"],
            "cpu_seconds_per_image": min(r["cpu_seconds_per_image"] for r in done),
            "system_seconds_per_image": best["system_seconds_per_image"],
            "minor_faults_per_image": best["minor_faults_per_image"],
            "executed_gflop": best["executed_flops"] / 1e9, "executed_x_floor": best["executed_flops"] / floor,
            "x_limit": best["seconds_per_image"] / limit,
            "cpu_x_limit": min(r["cpu_seconds_per_image"] for r in done) / cpu_limit,
            "peak_memory_mib": best["peak_memory_mib"], "predictions": best["predictions"],
            "all_seconds": [s for r in done for s in r["all_seconds"]], "loadavg_end": best["loadavg_end"],
        }
        entry["floor_gflop"] = floor / 1e9
        entry["floor_parts_gflop"] = {k: v / 1e9 for k, v in best["floor_flops"].items()}
        entry["limit_seconds"] = limit
        entry["cpu_limit_seconds"] = cpu_limit
    ours_, ref = entry.get("ours", {}), entry.get("reference", {})
    if "seconds_per_image" in ours_ and "seconds_per_image" in ref:
        entry["reference_over_ours"] = ref["seconds_per_image"] / ours_["seconds_per_image"]
        entry["reference_over_ours_cpu"] = ref["cpu_seconds_per_image"] / ours_["cpu_seconds_per_image"]
        entry["same_predictions_as_reference"] = ours_["predictions"] == ref["predictions"]
    base = entry.get("straightforward", {})
    if "seconds_per_image" in ours_ and "seconds_per_image" in base:
        entry["same_predictions_as_straightforward"] = ours_["predictions"] == base["predictions"]
    return entry


def print_tables(payload: dict) -> None:
    """The results as Markdown tables (what the README shows)."""
    results = payload["results"]
    print(f"\nTPT per test image against the limit: {payload['device']}, {payload['threads']} thread(s), "
          f"matmul peak {payload['matmul_gflops']:.0f} GFLOP/s wall, {payload['matmul_gflops_cpu']:.0f} per CPU-s; "
          f"load average {payload['loadavg_start'][0]:.1f} -> {payload['loadavg_end'][0]:.1f}")
    print("| backbone | classes | floor GFLOP | executed GFLOP (x floor) | limit s (CPU) | s/image (x limit) | "
          "CPU s/image (x CPU limit) | system s | minor faults | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in results:
        o = e.get("ours", {})
        if "seconds_per_image" not in o:
            print(f"| {e['arch']} | {e['classes']} | – | {o.get('skipped', '–')} |||||||")
            continue
        print(f"| {e['arch']} | {e['classes']} | {e['floor_gflop']:.0f} | {o['executed_gflop']:.0f} "
              f"({o['executed_x_floor']:.2f}x) | {e['limit_seconds']:.1f} ({e['cpu_limit_seconds']:.1f}) | "
              f"{o['seconds_per_image']:.1f} "
              f"({o['x_limit']:.2f}x) | {o['cpu_seconds_per_image']:.1f} ({o['cpu_x_limit']:.2f}x) | "
              f"{o['system_seconds_per_image']:.2f} | {o['minor_faults_per_image']:,.0f} | "
              f"{o['peak_memory_mib'] / 1024:.1f} |")
    if any("reference" in e or "straightforward" in e for e in results):
        print("\nSide by side (same views, same random weights, first image of each process dropped)")
        print("| backbone | classes | other | other s/image (CPU s) | vlprompt s/image (CPU s) | ratio (CPU) | "
              "peak RSS GB other / ours | other executed GFLOP | same predictions |")
        print("|---|---|---|---|---|---|---|---|---|")
        for e in results:
            o = e.get("ours", {})
            for impl in ("reference", "straightforward"):
                other = e.get(impl)
                if other is None:
                    continue
                if "seconds_per_image" not in other or "seconds_per_image" not in o:
                    print(f"| {e['arch']} | {e['classes']} | {impl} | {other.get('skipped', '–')} ||||||")
                    continue
                print(f"| {e['arch']} | {e['classes']} | {impl} | {other['seconds_per_image']:.1f} "
                      f"({other['cpu_seconds_per_image']:.1f}) | {o['seconds_per_image']:.1f} "
                      f"({o['cpu_seconds_per_image']:.1f}) | "
                      f"{other['seconds_per_image'] / o['seconds_per_image']:.2f}x "
                      f"({other['cpu_seconds_per_image'] / o['cpu_seconds_per_image']:.2f}x) | "
                      f"{other['peak_memory_mib'] / 1024:.1f} / {o['peak_memory_mib'] / 1024:.1f} | "
                      f"{other['executed_gflop']:.0f} | {other['predictions'] == o['predictions']} |")


def check_reference(directory: str) -> str:
    """The TPT checkout's absolute path, or an error naming what is missing."""
    from vlprompt.errors import UsageError

    path = Path(directory).expanduser().resolve()
    missing = [name for name in ("tpt_classification.py", "clip/custom_clip.py", "clip/model.py") if not (path / name).is_file()]
    if missing:
        raise UsageError(f"--reference {directory}: not a checkout of github.com/azshue/TPT (missing "
                         f"{', '.join(missing)}); clone it there first")
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["rn50", "vit_b16"], choices=sorted(SPECS))
    parser.add_argument("--classes", nargs="+", type=int, default=[37, 200, 1000])
    parser.add_argument("--images", type=int, default=2, help="timed test images per measurement (after one warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per implementation and case (interleaved)")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-images", type=int, default=0, help="images tuned at once by ours (0: 8 on GPU, 1 on CPU)")
    parser.add_argument("--impls", nargs="+", default=["ours"], choices=IMPLS,
                        help="implementations to time (reference is added by --reference)")
    parser.add_argument("--reference", default="", help="a checkout of the original TPT code (github.com/azshue/TPT)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--memory-limit-gb", type=float, default=16.0, help="address-space cap per CPU measurement")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--family", action="store_true",
                        help="the test-time methods (TPT, C-TPT, Zero, MTA, TDA): s/image and FLOPs per image")
    parser.add_argument("--methods", nargs="+", default=list(FAMILY), choices=FAMILY, help="with --family")
    parser.add_argument("--table", default="", help="only print the tables of an earlier --out JSON")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(family_worker(spec) if "method" in spec else worker(spec)))
        return {}
    if args.family:
        return family_main(args)
    if args.table:
        payload = json.loads(Path(args.table).read_text())
        print_tables(payload)
        return payload

    impls = list(dict.fromkeys(args.impls + (["reference"] if args.reference else [])))
    reference_dir = check_reference(args.reference) if "reference" in impls else ""
    device = torch.device(args.device)
    batch_images = args.batch_images or (8 if device.type == "cuda" else 1)
    load_start = os.getloadavg()
    results, peaks, best_gflops, best_gflops_cpu = [], {}, 0.0, 0.0
    for arch in args.archs:
        for classes in sorted(args.classes):
            case = {"arch": ARCH_NAMES[arch], "classes": classes, "device": args.device, "views": args.views,
                    "steps": args.steps, "images": args.images, "batch_images": batch_images}
            runs: dict[str, list[dict]] = {impl: [] for impl in impls}
            for _ in range(args.repeats):
                for impl in impls:
                    spec = {"impl": impl, "arch": arch, "classes": classes, "views": args.views, "steps": args.steps,
                            "images": args.images, "device": args.device, "threads": args.threads,
                            "batch_images": batch_images, "reference": reference_dir}
                    known = peaks.get((arch, impl))  # (classes, peak, model) MiB: what grows with the class count
                    expected = known and known[2] + (known[1] - known[2]) * classes / known[0]
                    if expected and expected > 0.8 * min(available_mib(device), args.memory_limit_gb * 1024):
                        runs[impl].append({**spec, "skipped": f"needs about {expected / 1024:.0f} GiB (extrapolated "
                                           f"from {known[0]} classes), more than this machine allows"})
                        print(f"{arch} {classes} {impl}: {runs[impl][-1]['skipped']}", file=sys.stderr, flush=True)
                        continue
                    measured = run_one(spec, args.memory_limit_gb)
                    runs[impl].append(measured)
                    if "seconds_per_image" in measured:
                        peaks[(arch, impl)] = (classes, measured["peak_memory_mib"], measured["model_memory_mib"])
                        best_gflops = max(best_gflops, measured["matmul_gflops"])
                        best_gflops_cpu = max(best_gflops_cpu, measured["matmul_gflops_cpu"])
                        print(f"{arch} {classes:5d} {impl:15s} {measured['seconds_per_image']:8.2f} s/image "
                              f"({measured['cpu_seconds_per_image']:.2f} CPU-s) {measured['peak_memory_mib']:9.0f} MiB "
                              f"peak, {measured['executed_flops'] / 1e9:.0f} GFLOP", file=sys.stderr, flush=True)
                    else:
                        print(f"{arch} {classes} {impl}: {measured['skipped']}", file=sys.stderr, flush=True)
            results.append((case, runs))
    payload = {
        "machine": platform.platform(), "processor": platform.processor(), "python": platform.python_version(),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": args.threads or torch.get_num_threads(), "cpu_count": os.cpu_count(), "matmul_gflops": best_gflops,
        "matmul_gflops_cpu": best_gflops_cpu,
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "note": "load averages are of the whole machine (other jobs included); seconds are the minimum over the "
                "timed images, CPU seconds are this process's",
        "results": [summarise(case, runs, best_gflops, best_gflops_cpu) for case, runs in results],
    }
    print_tables(payload)
    if args.out:
        from vlprompt.engine.checkpoint import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    return payload


# ------------------------------------------------------------------------ the test-time family
FAMILY = ("TPT", "CTPT", "Zero", "MTA", "TDA")


def family_method(method: str, model, names: list[str], device: torch.device, amp: bool):
    """``predict(views (1, N, 3, R, R)) -> class`` for one method, and its once-per-dataset setup done (the
    class text features of the methods that do not tune the prompt)."""
    from types import SimpleNamespace

    from vlprompt.modeling import adapter_for
    from vlprompt.text_encoder import PromptTextEncoder
    from vlprompt.tta.mta import mta_logits
    from vlprompt.tta.objective import calibrated_entropy
    from vlprompt.tta.sources import WordsContext
    from vlprompt.tta.tda import TDACaches, TDASettings, stream_item
    from vlprompt.tta.text import ClassTexts
    from vlprompt.tta.tuner import PromptTuner, TPTSettings, ViewEncoder, normalize
    from vlprompt.tta.zero import zero_votes

    source = WordsContext("a photo of a")
    scale = model.logit_scale.exp().float()

    encoder = ViewEncoder(model.visual, model.visual.input_resolution, device, amp=amp)  # as the harness

    def features_of(views):
        return encoder(views.to(device))

    if method in ("TPT", "CTPT"):
        learner = source.learner(names, model)
        scaler = torch.amp.GradScaler("cuda", init_scale=1000) if amp else None
        objective = calibrated_entropy(50.0) if method == "CTPT" else None
        tuner = PromptTuner(learner, PromptTextEncoder(model), scale, TPTSettings(amp=amp), scaler, objective=objective)

        def predict(views):
            features = features_of(views)
            result = tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=True)
            return int(result.logits[0].argmax())

        return predict
    text = ClassTexts(SimpleNamespace(adapter=adapter_for(model), model=model), names, source, None, device).fixed
    if method == "Zero":
        return lambda views: int(zero_votes(normalize(features_of(views))[0] @ text.t(), scale, 0.3).argmax())
    if method == "MTA":
        return lambda views: int(mta_logits(normalize(features_of(views))[0], text, scale).argmax())
    caches = TDACaches(text, TDASettings())
    return lambda views: int(caches.step(stream_item(normalize(features_of(views))[0], text, caches.settings)).argmax())


def family_worker(spec: dict) -> dict:
    """One method's measurement: ``spec`` = method, arch, classes, images, views, device, threads."""
    device = torch.device(spec["device"])
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    amp = device.type == "cuda"
    model = build_clip(spec["arch"], device)
    names = class_names(spec["classes"])
    views = torch.randn(spec["images"], spec["views"], 3, 224, 224, generator=torch.Generator().manual_seed(1))
    started = time.perf_counter()
    predict = family_method(spec["method"], model, names, device, amp)
    setup = time.perf_counter() - started
    predict(views[:1])  # warm-up (kernels, the first text forward TPT keeps for the class set)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    predictions = [predict(views[i : i + 1]) for i in range(len(views))]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / len(views)
    with flop_counter() as counter:
        predict(views[:1])
    return {**spec, "seconds_per_image": seconds, "gflops_per_image": counter.get_total_flops() / 1e9,
            "setup_seconds": setup, "predictions": predictions}


def family_table(results: list[dict]) -> None:
    """The family's results as a Markdown table (what the README shows)."""
    first = results[0] if results else {}
    print(f"\nTest-time methods per test image ({first.get('views')} views, {first.get('device')}, "
          f"{first.get('images')} image(s) after one warm-up)")
    print("| backbone | classes | method | s/image | GFLOPs/image | text backward | once per dataset (s) |")
    print("|---|---|---|---|---|---|---|")
    for e in results:
        if "skipped" in e:
            print(f"| {ARCH_NAMES[e['arch']]} | {e['classes']} | {e['method']} | – | – | – | {e['skipped']} |")
            continue
        backward = "yes" if e["method"] in ("TPT", "CTPT") else "no"
        print(f"| {ARCH_NAMES[e['arch']]} | {e['classes']} | {e['method']} | {e['seconds_per_image']:.2f} | "
              f"{e['gflops_per_image']:.0f} | {backward} | {e['setup_seconds']:.1f} |")


def family_main(args: argparse.Namespace) -> dict:
    """``--family``: each method in its own process, on the same views."""
    if args.table:
        payload = json.loads(Path(args.table).read_text())
        family_table(payload["results"])
        return payload
    results = []
    for arch in args.archs:
        for classes in sorted(args.classes):
            for method in args.methods:
                spec = {"method": method, "arch": arch, "classes": classes, "images": args.images,
                        "views": args.views, "device": args.device, "threads": args.threads}
                result = run_one(spec, args.memory_limit_gb)
                results.append(result)
                summary = result.get("skipped") or (f"{result['seconds_per_image']:8.2f} s/image "
                                                     f"{result['gflops_per_image']:9.0f} GFLOPs")
                print(f"{arch} {classes:5d} {method:5s} {summary}", flush=True)
    family_table(results)
    payload = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "cpu_threads": args.threads or torch.get_num_threads(), "load_average": os.getloadavg(),
               "results": results}
    if args.device.startswith("cuda"):
        payload["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return payload


if __name__ == "__main__":
    main()
