"""TPT cost per test image: vlprompt's TPT against the straightforward computation (as the reference code).

    python benchmarks/bench_tpt.py                       # CPU: ViT-B/16 and RN50 sizes, 200 and 1000 classes
    python benchmarks/bench_tpt.py --device cuda         # GPU (amp, several images tuned at once)
    python benchmarks/bench_tpt.py --archs vit_b16 --classes 200 --images 2 --out bench.json
    python benchmarks/bench_tpt.py --family              # TPT, C-TPT, Zero, MTA, TDA: s/image and FLOPs

Both run on the same views of the same images with a random-weight CLIP of the real size (no download)
and the first N ImageNet class names. "straightforward" re-encodes all views at every
step and the original for the prediction, runs the text tower over all 77 positions, one image at a time
(vlprompt.tta.straightforward); "ours" encodes the views once, truncates the text tower at the last
end-of-text token, computes the shared [SOS][context] positions once and, on a GPU, tunes several images
at once. View making is not timed (it is the same work for both). Each measurement runs in its own
process so peak memory is its own; a straightforward run whose memory, extrapolated from the smaller
class count, would not fit is skipped and reported as such.

``--family`` measures the test-time methods side by side instead (the section at the end of this file):
per test image the seconds and the FLOPs (forward and backward, counted by torch's FlopCounterMode) of
TPT, C-TPT, Zero, MTA and TDA on the same views; the class text features Zero, MTA and TDA compute once
per dataset are timed apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import vlprompt  # noqa: F401, I001 - before torch/clip: installs the torchvision shim
import torch
from bench_prompt_learning import SPECS, TEXT  # the two backbones' sizes, one home for the benchmarks

ARCH_NAMES = {"vit_b16": "ViT-B/16", "rn50": "RN50"}


def class_names(n: int) -> list[str]:
    """The first ``n`` ImageNet class names (CLIP's spelling): real token lengths, hence real truncation."""
    from vlprompt.imagenet_classnames import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES[:n])


def build_clip(arch: str, device: torch.device):
    from vlprompt.clip_backbone import import_clip

    clip = import_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = clip.model.CLIP(**SPECS[arch], **TEXT)
    return model.eval().float().to(device).requires_grad_(False)


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the bytes in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass
    return rss_kib("VmRSS") * 1024


def peak_since(device: torch.device, baseline: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - baseline
    return rss_kib("VmHWM") * 1024 - baseline


def worker(spec: dict) -> dict:
    """One measurement: ``spec`` = arch, classes, impl, images, views, device, batch_images."""
    from vlprompt.text_encoder import PromptTextEncoder
    from vlprompt.tta.sources import WordsContext
    from vlprompt.tta.straightforward import StraightforwardTPT
    from vlprompt.tta.tuner import PromptTuner, TPTSettings, encode_views, normalize

    device = torch.device(spec["device"])
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    amp = device.type == "cuda"
    model = build_clip(spec["arch"], device)
    names = class_names(spec["classes"])
    settings = TPTSettings(n_views=spec["views"], steps=spec["steps"], amp=amp)
    source = WordsContext("a photo of a")
    generator = torch.Generator().manual_seed(1)
    views = torch.randn(spec["images"], spec["views"], 3, 224, 224, generator=generator)
    predictions: list[int] = []
    baseline = reset_peak(device)
    started = time.perf_counter()
    if spec["impl"] == "straightforward":
        tpt = StraightforwardTPT(model, source.learner(names, model), settings)
        for image in views:
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                logits, _ = tpt(image.to(device))
            predictions.append(int(logits.argmax()))
    else:
        learner = source.learner(names, model)
        scaler = torch.amp.GradScaler("cuda", init_scale=1000) if amp else None
        tuner = PromptTuner(learner, PromptTextEncoder(model), model.logit_scale.exp(), settings, scaler)
        batch = spec["batch_images"]
        for i in range(0, len(views), batch):
            chunk = views[i : i + batch].to(device)
            features = encode_views(model.visual, chunk, chunk=256, amp=amp)
            result = tuner.tune(normalize(features), source.initial_context(learner, features[:, 0]), same_start=True)
            predictions += result.logits.argmax(-1).tolist()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {**spec, "seconds_per_image": seconds / len(views), "peak_memory_mib": peak_since(device, baseline) / 2**20,
            "predictions": predictions}


def print_table(results: list[dict]) -> None:
    """The results as a Markdown table (what the README shows)."""
    first = results[0] if results else {}
    print(f"\nTPT per test image ({first.get('views')} views, {first.get('steps')} step(s), {first.get('device')}, "
          f"{first.get('images')} image(s))")
    print("| backbone | classes | ours s/img | straightforward s/img | speed-up | ours peak MiB | straightforward "
          "peak MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")

    def cell(d: dict, key: str, fmt: str, suffix: str = "") -> str:
        return format(d[key], fmt) + suffix if key in d else "–"

    notes = []
    for e in results:
        o, b = e["ours"], e["straightforward"]
        print(f"| {e['arch']} | {e['classes']} | {cell(o, 'seconds_per_image', '.1f')} | "
              f"{cell(b, 'seconds_per_image', '.1f')} | {cell(e, 'speedup', '.1f', 'x')} | "
              f"{cell(o, 'peak_memory_mib', '.0f')} | {cell(b, 'peak_memory_mib', '.0f')} | "
              f"{cell(e, 'memory_ratio', '.1f', 'x')} |")
        notes += [f"{e['arch']}, {e['classes']} classes, {name}: {d['skipped']}"
                  for name, d in (("ours", o), ("straightforward", b)) if "skipped" in d]
    for note in notes:
        print(note)


def available_mib(device: torch.device) -> float:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / 2**20
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def run_one(spec: dict) -> dict:
    completed = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], check=False,
                               capture_output=True, text=True)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {**spec, "skipped": f"failed (exit {completed.returncode}): {' | '.join(tail)}"}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=["vit_b16", "rn50"], choices=sorted(SPECS))
    parser.add_argument("--classes", nargs="+", type=int, default=[200, 1000])
    parser.add_argument("--images", type=int, default=2, help="test images per measurement")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-images", type=int, default=0, help="images tuned at once (0: 8 on GPU, 1 on CPU)")
    parser.add_argument("--impls", nargs="+", default=["ours", "straightforward"], choices=["ours", "straightforward"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--table", default="", help="only print the table of an earlier --out JSON")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--family", action="store_true",
                        help="the test-time methods (TPT, C-TPT, Zero, MTA, TDA): s/image and FLOPs per image")
    parser.add_argument("--methods", nargs="+", default=list(FAMILY), choices=FAMILY, help="with --family")
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(family_worker(spec) if "method" in spec else worker(spec)))
        return []
    if args.family:
        return family_main(args)
    if args.table:
        results = json.loads(Path(args.table).read_text())["results"]
        print_table(results)
        return results

    device = torch.device(args.device)
    batch_images = args.batch_images or (8 if device.type == "cuda" else 1)
    results = []
    for arch in args.archs:
        peaks: dict[str, tuple[int, float]] = {}
        for classes in sorted(args.classes):
            row = {}
            for impl in args.impls:
                spec = {"arch": arch, "classes": classes, "impl": impl, "images": args.images, "views": args.views,
                        "steps": args.steps, "device": args.device, "threads": args.threads,
                        "batch_images": batch_images if impl == "ours" else 1}
                if impl in peaks:  # memory grows with the class count: skip what cannot fit
                    known_classes, known_peak = peaks[impl]
                    expected = known_peak * classes / known_classes
                    if expected > 0.8 * available_mib(device):
                        row[impl] = {**spec, "skipped": f"needs about {expected / 1024:.0f} GiB (extrapolated from "
                                     f"{known_classes} classes), more than this machine has free"}
                        print(f"{arch} {classes} {impl}: {row[impl]['skipped']}", flush=True)
                        continue
                row[impl] = run_one(spec)
                if "peak_memory_mib" in row[impl]:
                    peaks[impl] = (classes, row[impl]["peak_memory_mib"])
                    print(f"{arch} {classes:5d} {impl:15s} {row[impl]['seconds_per_image']:8.2f} s/image "
                          f"{row[impl]['peak_memory_mib']:9.0f} MiB", flush=True)
                else:
                    print(f"{arch} {classes} {impl}: {row[impl]['skipped']}", flush=True)
            ours, base = row.get("ours", {}), row.get("straightforward", {})
            entry = {"arch": ARCH_NAMES[arch], "classes": classes, "device": args.device, "views": args.views,
                     "steps": args.steps, "images": args.images, "ours": ours, "straightforward": base}
            if "seconds_per_image" in ours and "seconds_per_image" in base:
                entry["speedup"] = base["seconds_per_image"] / ours["seconds_per_image"]
                entry["memory_ratio"] = base["peak_memory_mib"] / max(ours["peak_memory_mib"], 1e-9)
                entry["same_predictions"] = ours["predictions"] == base["predictions"]
            results.append(entry)

    print_table(results)
    if args.out:
        payload = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                   "cpu_threads": args.threads or torch.get_num_threads(), "results": results}
        if device.type == "cuda":
            payload["gpu"] = torch.cuda.get_device_name(device)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return results


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
    from vlprompt.tta.tuner import PromptTuner, TPTSettings, encode_views, normalize
    from vlprompt.tta.zero import zero_votes

    source = WordsContext("a photo of a")
    scale = model.logit_scale.exp().float()

    def features_of(views):
        return encode_views(model.visual, views.to(device), chunk=256, amp=amp)

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
    from torch.utils.flop_counter import FlopCounterMode

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
    with FlopCounterMode(display=False) as counter:
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


def family_main(args: argparse.Namespace) -> list[dict]:
    """``--family``: each method in its own process, on the same views."""
    if args.table:
        results = json.loads(Path(args.table).read_text())["results"]
        family_table(results)
        return results
    results = []
    for arch in args.archs:
        for classes in sorted(args.classes):
            for method in args.methods:
                spec = {"method": method, "arch": arch, "classes": classes, "images": args.images,
                        "views": args.views, "device": args.device, "threads": args.threads}
                result = run_one(spec)
                results.append(result)
                summary = result.get("skipped") or (f"{result['seconds_per_image']:8.2f} s/image "
                                                     f"{result['gflops_per_image']:9.0f} GFLOPs")
                print(f"{arch} {classes:5d} {method:5s} {summary}", flush=True)
    family_table(results)
    if args.out:
        payload = {"machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                   "cpu_threads": args.threads or torch.get_num_threads(), "results": results}
        if args.device.startswith("cuda"):
            payload["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
