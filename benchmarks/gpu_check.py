"""TPT on a GPU: a correctness pass and the throughput of ViT-B/16 at 1000 classes (run by gpu_check.sh).

    bash benchmarks/gpu_check.sh                          # one GPU, under 8 minutes; JSON to benchmarks/results/
    bash benchmarks/gpu_check.sh --prec bf16 --gpu-views  # bf16 autocast, views made on the GPU
    bash benchmarks/gpu_check.sh --device cpu --ci        # the same code on the CPU, CI-sized (tiny CLIP, seconds)

1. Correctness: the same views of a few test images tuned on the device in fp32 (several images at once)
   and on the CPU in fp32 (one at a time): the predictions must be the same; the largest logit difference
   is reported, and how many predictions the throughput precision (amp/bf16) changes.
2. Throughput: ViT-B/16 (random weights, real size), the first 1000 ImageNet class names, 64 views, one
   step, with 1, 8 and 32 images tuned at once (independent prompts): images per second after one warm-up
   batch and the projected time for ImageNet's 50,000 validation images. ``--gpu-views`` makes the views on
   the GPU from a decoded image (crop + flip, as for ImageNet) and counts that time too.

A time budget (--budget-s, default 420 s) stops the throughput part early rather than overrun; what was
skipped is reported. Without ``--out`` the JSON goes to benchmarks/results/gpu_check_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch
from bench_tpt import ARCH_NAMES, PRECISIONS, build_clip, ours

IMAGENET_VAL = 50_000
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan(args: argparse.Namespace) -> dict:
    """Sizes of this check: the real one, or the CI-sized one (``--ci``: tiny CLIP, few classes and views)."""
    if args.ci:
        return {"arch": "tiny ViT", "classes": 10, "views": 8, "batches": [1, 2, 4], "correct_images": 3, "timed_batches": 1}
    return {"arch": ARCH_NAMES["vit_b16"], "classes": 1000, "views": 64, "batches": [1, 8, 32], "correct_images": 4,
            "timed_batches": 2}


def model_for(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    if args.ci:
        from vlprompt.tiny_clip import build_tiny_clip

        return build_tiny_clip("vit", seed=0).float().eval().to(device).requires_grad_(False)
    return build_clip("vit_b16", device)


def random_views(images: int, views: int, seed: int) -> torch.Tensor:
    return torch.randn(images, views, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def device_views(images: int, views: int, device: torch.device, seed: int) -> torch.Tensor:
    """Views made on ``device`` from decoded synthetic images (the harness's GPU_VIEWS path: crop + flip)."""
    import numpy as np
    from PIL import Image

    from vlprompt.tta.views import ViewMaker, image_rng, pil_to_tensor

    maker = ViewMaker(224, views, False, CLIP_MEAN, CLIP_STD)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(images):
        img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
        params = maker.sample(image_rng(seed, i), *img.size)
        augmented = maker.render_device(pil_to_tensor(img).to(device, non_blocking=True), params)
        out.append(torch.cat([maker.original(img).to(device)[None], augmented]))
    return torch.stack(out)


def correctness(args: argparse.Namespace, sizes: dict, device: torch.device) -> dict:
    """Device fp32 (all images at once) against CPU fp32 (one at a time) on the same views."""
    spec = {"arch": "vit_b16", "classes": sizes["classes"], "views": sizes["views"], "steps": 1}
    views = random_views(sizes["correct_images"], sizes["views"], seed=1)
    cpu = torch.device("cpu")
    run_cpu, *_ = ours({**spec, "prec": "fp32"}, cpu, model=model_for(args, cpu))
    cpu_predictions, cpu_logits = [], []
    for image in views:
        predictions, logits = run_cpu(image[None], with_logits=True)
        cpu_predictions += predictions
        cpu_logits.append(logits.cpu())
    model = model_for(args, device)
    run_fp32, *_ = ours({**spec, "prec": "fp32"}, device, model=model)
    device_predictions, device_logits = run_fp32(views, with_logits=True)
    run_fast, *_ = ours({**spec, "prec": args.prec}, device, model=model)
    fast_predictions = run_fast(views)
    return {
        "images": len(views), "same_predictions": device_predictions == cpu_predictions,
        "cpu_predictions": cpu_predictions, "device_fp32_predictions": device_predictions,
        "max_logit_difference": float((device_logits.float().cpu() - torch.cat(cpu_logits)).abs().max()),
        f"{args.prec}_predictions": fast_predictions,
        f"{args.prec}_changed_predictions": sum(a != b for a, b in zip(fast_predictions, cpu_predictions)),
    }


def throughput(args: argparse.Namespace, sizes: dict, device: torch.device, deadline: float) -> list[dict]:
    """Images per second with 1, 8 and 32 images at once (CI: 1, 2, 4)."""
    spec = {"arch": "vit_b16", "classes": sizes["classes"], "views": sizes["views"], "steps": 1, "prec": args.prec}
    run, *_ = ours(spec, device, model=model_for(args, device))
    rows = []
    for batch in sizes["batches"]:
        if time.perf_counter() > deadline:
            rows.append({"batch_images": batch, "skipped": "time budget spent"})
            continue

        def views_of(seed: int, batch: int = batch) -> torch.Tensor:
            if args.gpu_views:
                return device_views(batch, sizes["views"], device, seed)
            return random_views(batch, sizes["views"], seed).to(device)

        run(views_of(100 + batch))  # warm-up: kernels chosen, memory pooled, the first step's text forward cached
        _sync(device)
        started = time.perf_counter()
        for k in range(sizes["timed_batches"]):
            run(views_of(200 + batch + k))
        _sync(device)
        seconds = time.perf_counter() - started
        per_second = batch * sizes["timed_batches"] / seconds
        row = {"batch_images": batch, "images_per_second": per_second, "seconds_per_image": 1 / per_second,
               "imagenet_val_minutes": IMAGENET_VAL / per_second / 60}
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(f"  {batch:3d} images at once: {per_second:8.2f} images/s, ImageNet ({IMAGENET_VAL:,}) in "
              f"{row['imagenet_val_minutes']:.1f} min", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prec", default="", choices=["", *PRECISIONS], help="throughput precision (default: amp on "
                        "CUDA, as the reference; fp32 on the CPU)")
    parser.add_argument("--gpu-views", action="store_true", help="make the views on the device (timed)")
    parser.add_argument("--ci", action="store_true", help="CI-sized: tiny CLIP, 10 classes, 8 views, 1/2/4 images")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new throughput runs after this")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU here; use --device cpu (with --ci for the CI-sized check)")
    args.prec = args.prec or ("amp" if device.type == "cuda" else "fp32")
    sizes = plan(args)
    print(f"TPT GPU check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: "
          f"{sizes['arch']}, {sizes['classes']} classes, {sizes['views']} views, prec {args.prec}"
          + (", views made on the device" if args.gpu_views else ""), flush=True)
    check = correctness(args, sizes, device)
    print(f"correctness: device fp32 vs CPU fp32 on {check['images']} images: same predictions "
          f"{check['same_predictions']}, max logit difference {check['max_logit_difference']:.2e}; "
          f"{args.prec} changes {check[f'{args.prec}_changed_predictions']}", flush=True)
    rows = throughput(args, sizes, device, started + args.budget_s)
    payload = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})",
        "torch": torch.__version__, "ci_sized": args.ci, "prec": args.prec, "gpu_views": args.gpu_views,
        "threads": torch.get_num_threads(), **sizes, "correctness": check, "throughput": rows,
        "seconds": time.perf_counter() - started,
    }
    out = Path(args.out or HERE / "results" / f"gpu_check_{device.type}{'_ci' if args.ci else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    from vlprompt.engine.checkpoint import atomic_write_text

    atomic_write_text(str(out), json.dumps(payload, indent=2) + "\n")
    print(f"{payload['seconds']:.0f} s; results in {os.path.relpath(out)}")
    return payload


if __name__ == "__main__":
    main()
