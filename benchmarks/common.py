"""What the benchmarks share: the backbones' real sizes, the machine's measured peak, FLOP counting, floors.

Floors are the FLOPs a computation really needs (matrix products only, 2 per multiply-add, as torch's FLOP
counter counts them); a benchmark divides measured seconds by floor / peak to say how far from the
hardware's limit it runs.
"""

from __future__ import annotations

import time

import torch

import vlprompt  # noqa: F401 - installs the torchvision shim before anything imports torchvision or clip

# clip.model.CLIP arguments of the two backbones (text tower shared: width 512, 8 heads, 12 layers).
SPECS = {
    "vit_b16": {"embed_dim": 512, "image_resolution": 224, "vision_layers": 12, "vision_width": 768,
                "vision_patch_size": 16},
    "rn50": {"embed_dim": 1024, "image_resolution": 224, "vision_layers": (3, 4, 6, 3), "vision_width": 64,
             "vision_patch_size": None},
}
TEXT = {"context_length": 77, "vocab_size": 49408, "transformer_width": 512, "transformer_heads": 8,
        "transformer_layers": 12}
RESOLUTION = 224


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, size: int = 2048, repeats: int = 20) -> tuple[float, float]:
    """The best fp32 matrix-multiply rate of ``repeats`` tries, per wall second and per second of this
    process's CPU time (the machine's peak as torch reaches it; on a busy machine the CPU-time rate is the
    steadier one, as time spent waiting for a core is not counted)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best_wall = best_cpu = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        wall, cpu = time.perf_counter(), time.process_time()
        a @ b
        sync(device)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, max(time.process_time() - cpu, 1e-9))
    flops = 2 * size**3 / 1e9
    return flops / best_wall, (flops / best_cpu if device.type == "cpu" else flops / best_wall)


def flop_counter():
    """torch's FLOP counter, also counting convolutions called straight through oneDNN (the folded tower)."""
    from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

    def onednn_convolution(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.mkldnn_convolution: onednn_convolution})


def image_flops(visual: torch.nn.Module, device: torch.device, resolution: int = RESOLUTION) -> int:
    """FLOPs of one image through the (unfused) image tower."""
    dtype = next(visual.parameters()).dtype
    with flop_counter() as counter, torch.no_grad():
        visual(torch.zeros(1, 3, resolution, resolution, device=device, dtype=dtype))
    return counter.get_total_flops()


def text_floor(eot: list[int], shared: int, embed_dim: int) -> dict[str, int]:
    """Forward and backward floor of one prompt set in the real text tower (see ``prompt_floor_flops``)."""
    from vlprompt.modeling.text_encoder import prompt_floor_flops

    return prompt_floor_flops(eot, shared, TEXT["transformer_width"], TEXT["transformer_layers"], embed_dim)
