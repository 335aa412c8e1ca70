#!/usr/bin/env python
"""Pretrain the micro CLIP contrastively on toy-world photos and captions; this made the bundled weights.

    python scripts/toyworld/pretrain_micro_clip.py                       # writes vlprompt/toyworld/weights/
    python scripts/toyworld/pretrain_micro_clip.py --steps 3 --out /tmp/mc.pt   # a quick check

Deterministic on a CPU: the initial weights come from ``--seed``, every batch from a NumPy generator
seeded by (seed, step), and torch runs with ``--threads`` threads and deterministic algorithms, so
the first steps of a short run are the first steps of the full one. Images are drawn only from the
"photo" domain and only from the combinations that are not held out (see vlprompt.toyworld.world).

The data are a pool of rendered images, a fraction of which is re-rendered every step (rendering
costs about as much as a training step); each use of an image gets a fresh random caption, and half
the uses show a random crop of it (captioned without size and position), as web images show objects
at every scale: without crops the model is lost on the zoomed views TPT relies on. The loss
is CLIP's symmetric cross-entropy with every caption that fits an image counted as a positive (a
caption without a colour fits images of every colour), since a batch holds many images of a class.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # runs from a checkout without installing
    sys.path.insert(0, str(REPO_ROOT))

import vlprompt  # noqa: F401 - the torchvision shim comes before clip
from vlprompt.clip_backbone import import_clip
from vlprompt.engine.checkpoint import atomic_save, atomic_write_text
from vlprompt.toyworld.captions import consistency, sample_caption, scene_facts
from vlprompt.toyworld.micro_clip import (
    METADATA_PATH,
    MICRO_CLIP_SPEC,
    WEIGHTS_PATH,
    build_micro_clip,
    caption_token_ids,
    normalize_images,
    resize_images,
    state_dict_fp16,
)
from vlprompt.toyworld.render import render_class
from vlprompt.toyworld.world import seen_combinations

TEXT_CONTEXT = 32  # captions are at most about 20 tokens; the model keeps its 77 positions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=96)
    parser.add_argument("--pool-size", type=int, default=2048, help="rendered images kept in memory")
    parser.add_argument("--refresh", type=int, default=32, help="pool images re-rendered per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--scale-lr-mult", type=float, default=10.0, help="learning-rate factor of the temperature")
    parser.add_argument("--warmup", type=int, default=30, help="linear warm-up steps, then cosine to zero")
    parser.add_argument("--image-size", type=int, default=56, help="rendered size (resized to 224 as in eval)")
    parser.add_argument("--crop-prob", type=float, default=0.5, help="fraction of batch images seen as a crop")
    parser.add_argument("--crop-min-scale", type=float, default=0.2, help="smallest crop, as a fraction of the area")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (fixed: results may depend on it)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (fp16 CLIP state dict)")
    parser.add_argument("--log-every", type=int, default=25)
    return parser


class ImagePool:
    """Rendered photos of the pretraining combinations (uint8, at the rendered size), partly re-rendered
    each step."""

    def __init__(self, size: int, image_size: int, seed: int) -> None:
        self.combos = seen_combinations()
        self.image_size = image_size
        self.images = np.zeros((size, image_size, image_size, 3), dtype=np.uint8)
        self.scenes: list = [None] * size
        self._render(np.arange(size), np.random.default_rng([seed, 0, 0]))

    def _render(self, indices: np.ndarray, rng: np.random.Generator) -> None:
        for index in indices:
            combo = self.combos[int(rng.integers(len(self.combos)))]
            self.images[index], self.scenes[index] = render_class(combo, "photo", rng, self.image_size)

    def refresh(self, count: int, rng: np.random.Generator) -> None:
        self._render(rng.choice(len(self.scenes), size=min(count, len(self.scenes)), replace=False), rng)


def crop_boxes(rng: np.random.Generator, count: int, size: int, probability: float,
               min_scale: float) -> list[tuple[int, int, int] | None]:
    """For each of ``count`` images, None (the whole image) or a square crop ``(top, left, side)`` of
    ``min_scale``..1 of the area: objects at other scales and positions than rendering puts them,
    so the model also knows the zoomed and cut-off views that test-time augmentation shows it."""
    boxes: list[tuple[int, int, int] | None] = []
    for _ in range(count):
        crop, area = rng.uniform() < probability, rng.uniform(min_scale, 1.0)
        side = max(8, round(size * math.sqrt(area)))
        top, left = rng.integers(0, size - side + 1, size=2)
        boxes.append((int(top), int(left), side) if crop and side < size else None)
    return boxes


def model_input(images: np.ndarray, boxes: list, resolution: int = 224) -> torch.Tensor:
    """The batch as CLIP input: whole images resized exactly as evaluation does, crops bicubically."""
    batch = resize_images(images, resolution)
    for index, box in enumerate(boxes):
        if box is not None:
            top, left, side = box
            patch = torch.from_numpy(np.ascontiguousarray(images[index, top : top + side, left : left + side]))
            patch = patch.permute(2, 0, 1)[None].float()
            resized = F.interpolate(patch, size=(resolution, resolution), mode="bicubic", align_corners=False)
            batch[index] = resized[0].round().clamp(0, 255).to(torch.uint8)
    return normalize_images(batch)


class CompactTokens:
    """Train only the token rows captions use: the model's 49408-row table is swapped for those rows
    (token ids remapped in order, so the end-of-text token keeps the largest id that CLIP's
    ``argmax`` looks for) and written back by :meth:`restore`. The other rows are zero and would get
    zero updates anyway; this spares their gradient and optimiser work (3.2M numbers a step)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.full = model.token_embedding
        self.ids = torch.tensor(sorted({0, *caption_token_ids()}))  # 0: clip.tokenize's padding
        self.lookup = torch.full((self.full.num_embeddings,), -1, dtype=torch.long)
        self.lookup[self.ids] = torch.arange(len(self.ids))
        model.token_embedding = torch.nn.Embedding.from_pretrained(self.full.weight[self.ids].clone(), freeze=False)

    def remap(self, tokens: torch.Tensor) -> torch.Tensor:
        compact = self.lookup[tokens]
        if (compact < 0).any():
            raise ValueError("a caption has a token outside caption_token_ids(); add its word to caption_words()")
        return compact

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the full token table (the trained rows written into a copy)."""
        state = dict(self.model.state_dict())
        table = self.full.weight.detach().clone()
        table[self.ids] = self.model.token_embedding.weight.detach()
        state["token_embedding.weight"] = table
        return state

    def restore(self) -> None:
        with torch.no_grad():
            self.full.weight[self.ids] = self.model.token_embedding.weight
        self.model.token_embedding = self.full


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of ``logits`` (images × captions) against uniform targets over positives."""
    positives = positives.float()
    image_targets = positives.t() / positives.t().sum(1, keepdim=True)  # per image: the captions that fit it
    text_targets = positives / positives.sum(1, keepdim=True)  # per caption: the images it fits
    image_loss = -(image_targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_loss = -(text_targets * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (image_loss + text_loss) / 2


def learning_rate(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW; no weight decay on gains, biases, embeddings and the temperature, which also learns
    ``--scale-lr-mult`` times faster (a few hundred Adam steps at the base rate barely move it)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name == "logit_scale":
            continue
        plain = param.ndim < 2 or "embedding" in name or name == "visual.class_embedding"
        (no_decay if plain else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": [model.logit_scale], "weight_decay": 0.0, "lr_mult": args.scale_lr_mult}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), eps=1e-6)


def train(args: argparse.Namespace, log=print, on_step=None) -> tuple[torch.nn.Module, list[float]]:
    """Run the pretraining; returns the fp32 model and the loss of every step.

    ``on_step(step, state_dict)``, when given, is called after every step with a function returning the
    model's full state dict (for experiments: snapshots).
    """
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    # Deterministic mode also fills every new tensor with NaN (a guard for reading uninitialised memory
    # that CPU kernels never do); that costs a third of a step here.
    torch.utils.deterministic.fill_uninitialized_memory = False
    clip = import_clip()
    model = build_micro_clip(args.seed).train()
    compact = CompactTokens(model)
    optimizer = make_optimizer(model, args)
    pool = ImagePool(args.pool_size, args.image_size, args.seed)
    losses = []
    started = time.time()
    for step in range(args.steps):
        rng = np.random.default_rng([args.seed, 1, step])
        if step:
            pool.refresh(args.refresh, rng)
        indices = rng.choice(args.pool_size, size=args.batch_size, replace=args.batch_size > args.pool_size)
        scenes = [pool.scenes[i] for i in indices]
        boxes = crop_boxes(rng, len(indices), args.image_size, args.crop_prob, args.crop_min_scale)
        captions = [sample_caption(scene, rng, framed=box is None) for scene, box in zip(scenes, boxes)]
        texts = compact.remap(clip.tokenize([text for text, _ in captions], context_length=TEXT_CONTEXT))
        facts = [scene_facts(scene, framed=box is None) for scene, box in zip(scenes, boxes)]
        positives = torch.from_numpy(consistency([mentions for _, mentions in captions], facts))
        images = model_input(pool.images[indices], boxes)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args) * group.get("lr_mult", 1.0)
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(model.encode_text(texts), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        loss = contrastive_loss(logits, positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, compact.full_state_dict)
        if args.log_every and ((step + 1) % args.log_every == 0 or step + 1 == args.steps):
            recent = losses[-args.log_every:]
            log(f"step {step + 1}/{args.steps} loss {sum(recent) / len(recent):.4f} "
                f"scale {model.logit_scale.exp().item():.1f} elapsed {time.time() - started:.0f}s")
    compact.restore()
    return model.eval(), losses


def main(argv: list[str] | None = None) -> dict:
    """Pretrain, write the weights (fp16 state dict) and a JSON record beside them; returns the record."""
    args = build_parser().parse_args(argv)
    started = time.time()
    model, losses = train(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(state_dict_fp16(model), str(out))
    record = {
        "script": "scripts/toyworld/pretrain_micro_clip.py",
        "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                 if key != "out"},
        "spec": MICRO_CLIP_SPEC,
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 1),
        "first_losses": [round(value, 6) for value in losses[:3]],
        "final_loss": round(sum(losses[-25:]) / len(losses[-25:]), 6),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
    }
    metadata = METADATA_PATH if out == WEIGHTS_PATH else out.with_suffix(".json")
    atomic_write_text(str(metadata), json.dumps(record, indent=2) + "\n")
    print(f"Wrote {out} and {metadata} ({record['seconds']} s)")
    return record


if __name__ == "__main__":
    main()
