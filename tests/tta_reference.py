"""The fixed inputs the test-time methods' reference code was run on, and where its outputs are stored.

``tests/data/tta_reference/`` holds what C-TPT, Zero, MTA and TDA's own code output on these inputs (a tiny
random CLIP and random views), made by ``tests/data/tta_reference/run_references.py`` outside the project
(see the README there); ``tests/test_tta_family.py`` compares our pieces with them. The inputs are rebuilt
here rather than stored: the tiny CLIP and the views are deterministic.

    python tests/tta_reference.py OUT.pt    # the inputs as one file, for run_references.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import vlprompt  # noqa: F401 - the torchvision shim first

REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "tta_reference"
RESOLUTION = 32
CLASSNAMES = ["abyssinian", "american_bulldog", "beagle", "great pyrenees", "newfoundland", "sphynx"]
# One set of views per case: (images, views per image, seed).
CASES = {
    "ctpt": (4, 16, 1),
    "zero": (8, 16, 2),
    "mta": (4, 16, 3),
    "tda_multi": (24, 20, 4),  # the ImageNet shifts' path: AugMix views, 10% kept
    "tda_single": (40, 1, 5),  # ImageNet and the fine-grained sets: the original view only
}
# The settings the references were run with (their defaults where the tiny case allows).
SETTINGS = {
    "ctpt": {"selection_p": 0.25, "lr": 5e-3, "lambda_term": 50.0, "tta_steps": 1, "ctx_init": "a_photo_of_a"},
    "zero": {"ctx_init": "a_photo_of_a"},
    "mta": {"lambda_y": 0.2, "lambda_q": 4.0, "ctx_init": "a_photo_of_a"},
    "tda": {"template": ["a photo of a {}.", "itap of a {}."], "positive": {"shot_capacity": 3, "alpha": 2.0, "beta": 5.0},
            "negative": {"shot_capacity": 2, "alpha": 0.117, "beta": 1.0, "entropy_threshold": [0.2, 0.5],
                         "mask_threshold": [0.03, 1.0]}},
}


def reference_clip() -> torch.nn.Module:
    """The tiny ViT CLIP (32-pixel input) with the weights OpenAI's ``build_model`` gives it: the layers
    ``convert_weights`` stores in fp16 are rounded to fp16, everything computes in fp32."""
    from vlprompt.modeling.backbones.openai import import_clip
    from vlprompt.tiny_clip import build_tiny_clip

    model = build_tiny_clip("vit", seed=0, image_resolution=RESOLUTION)
    import_clip().model.convert_weights(model)
    return model.float().eval().requires_grad_(False)


def reference_views(case: str) -> torch.Tensor:
    """Views ``(images, views, 3, R, R)`` of ``case`` (view 0 plays the original)."""
    images, views, seed = CASES[case]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(images, views, 3, RESOLUTION, RESOLUTION, generator=generator)


def reference_labels(case: str) -> torch.Tensor:
    images = CASES[case][0]
    return torch.arange(images) % len(CLASSNAMES)


def load_outputs(name: str) -> dict:
    """A reference's stored outputs (``tests/data/tta_reference/<name>.pt``: tensors and numbers only)."""
    return torch.load(REFERENCE_DIR / f"{name}.pt", weights_only=True)


def write_inputs(path: str) -> None:
    payload = {
        "state_dict": reference_clip().state_dict(), "classnames": CLASSNAMES, "settings": SETTINGS,
        "views": {case: reference_views(case) for case in CASES},
        "labels": {case: reference_labels(case) for case in CASES},
    }
    torch.save(payload, path)


if __name__ == "__main__":
    write_inputs(sys.argv[1])
    print(f"wrote {sys.argv[1]}")
