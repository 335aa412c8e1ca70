"""TPT's test-time views of one image: the original plus random resized crops (+ flips), with AugMix on top
for fine-grained datasets, as the reference makes them.

The random choices of one image (crop boxes, flips, AugMix chains and their strengths) are drawn first, as
plain numbers, from a generator seeded by (run seed, image index), and then carried out on PIL images
(:meth:`ViewMaker.views`, the reference's way) or on tensors on the model's device
(:meth:`ViewMaker.render_device`). So an image gets the same views whatever the batch, the shard, the
worker or a resume, and the two executors apply the same operations (only their resampling differs).

AugMix (Hendrycks et al., 2020) as TPT uses it: severity 1, three chains of 1-3 operations drawn from
autocontrast, equalize, posterize, rotate, solarize, shear-x/y and translate-x/y; chain weights
~ Dirichlet(1, 1, 1); the mix is blended with the plain crop by m ~ Beta(1, 1), in normalised pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from vlprompt.errors import UserValueError
from vlprompt.threads import single_thread

AUG_CHOICES = ("auto", "crop", "augmix")
# ImageNet and its shifted test sets get crops and flips only (the reference's single-letter set ids, and
# the authors found AugMix did not help there); every other dataset gets AugMix.
IMAGENET_STYLE = ("ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR", "I", "A", "V", "R", "K")
# The distribution shifts of a source dataset (ImageNet's, and the toy world's mirror of them), which the
# test-time methods' own scripts treat apart from the source and the fine-grained sets.
DISTRIBUTION_SHIFTS = ("ImageNetA", "ImageNetV2", "ImageNetR", "ImageNetSketch", "A", "V", "R", "K",
                       "ToyWorldA", "ToyWorldR", "ToyWorldSketch")
CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
AUGMIX_CHAINS = 3
AUGMIX_MAX_DEPTH = 3


def resolve_aug(aug: str, dataset_name: str) -> str:
    """``crop`` or ``augmix`` for ``TRAINER.TPT.AUG`` (``auto``: crop for the ImageNet family, else AugMix)."""
    if aug not in AUG_CHOICES:
        raise UserValueError(f'TRAINER.TPT.AUG is "{aug}"; use one of {", ".join(AUG_CHOICES)}')
    if aug != "auto":
        return aug
    return "crop" if dataset_name in IMAGENET_STYLE or dataset_name.startswith("ImageNet") else "augmix"


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s views in a run seeded ``seed`` (both >= 0)."""
    return np.random.default_rng([int(seed), int(index)])


# ----------------------------------------------------------------------------------------- operations
# Each operation is (name, parameter sampler). A sampler turns the generator and the severity into the
# concrete value the operation is applied with, so both executors apply exactly the same operation.


def _level(rng: np.random.Generator, severity: float) -> float:
    return float(rng.uniform(0.1, severity))


def _signed(rng: np.random.Generator, value: float) -> float:
    return -value if rng.uniform() > 0.5 else value


def _no_parameter(rng: np.random.Generator, severity: float, size: int) -> float:
    return 0.0


def _posterize_bits(rng, severity, size) -> float:
    return float(4 - int(_level(rng, severity) * 4 / 10))


def _rotate_degrees(rng, severity, size) -> float:
    return _signed(rng, float(int(_level(rng, severity) * 30 / 10)))


def _solarize_threshold(rng, severity, size) -> float:
    return float(256 - int(_level(rng, severity) * 256 / 10))


def _shear(rng, severity, size) -> float:
    return _signed(rng, _level(rng, severity) * 0.3 / 10)


def _translate_pixels(rng, severity, size) -> float:
    return _signed(rng, float(int(_level(rng, severity) * (size / 3) / 10)))


AUGMIX_OPS: tuple[tuple[str, object], ...] = (
    ("autocontrast", _no_parameter),
    ("equalize", _no_parameter),
    ("posterize", _posterize_bits),
    ("rotate", _rotate_degrees),
    ("solarize", _solarize_threshold),
    ("shear_x", _shear),
    ("shear_y", _shear),
    ("translate_x", _translate_pixels),
    ("translate_y", _translate_pixels),
)
AFFINE_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def affine_coefficients(name: str, value: float, size: int) -> tuple[float, ...]:
    """PIL's AFFINE data (output pixel → input pixel) of a geometric operation on a ``size``² image."""
    if name == "shear_x":
        return (1.0, value, 0.0, 0.0, 1.0, 0.0)
    if name == "shear_y":
        return (1.0, 0.0, 0.0, value, 1.0, 0.0)
    if name == "translate_x":
        return (1.0, 0.0, value, 0.0, 1.0, 0.0)
    if name == "translate_y":
        return (1.0, 0.0, 0.0, 0.0, 1.0, value)
    if name == "rotate":  # counter-clockwise by `value` degrees about the centre, as Image.rotate
        angle = -math.radians(value)
        a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
        d, e = -b, a
        centre = size / 2.0
        return (a, b, centre - a * centre - b * centre, d, e, centre - d * centre - e * centre)
    raise ValueError(f"{name} is not a geometric AugMix operation")


def apply_op_pil(img: Image.Image, name: str, value: float) -> Image.Image:
    """One AugMix operation on a PIL image (the reference executor)."""
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "posterize":
        return ImageOps.posterize(img, int(value))
    if name == "solarize":
        return ImageOps.solarize(img, int(value))
    if name == "rotate":
        return img.rotate(value, resample=Image.BILINEAR)
    return img.transform(img.size, Image.AFFINE, affine_coefficients(name, value, img.size[0]),
                         resample=Image.BILINEAR)


# ------------------------------------------------------------------------------------------- sampling
@dataclass
class ViewParams:
    """The random choices of one augmented view: crop box, flip and (AugMix) chains and weights."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    chains: list[list[tuple[int, float]]] = field(default_factory=list)  # (op index, value) per step
    chain_weights: tuple[float, ...] = ()
    mix: float = 1.0  # weight of the plain crop in the final blend


def sample_crop(rng: np.random.Generator, width: int, height: int,
                scale: Sequence[float] = CROP_SCALE, ratio: Sequence[float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)``: up to 10 draws of area and log-uniform aspect ratio,
    then the centre crop of the nearest allowed ratio (torchvision's procedure)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class ViewMaker:
    """Makes ``n_views`` views of an image: view 0 is the original (resize the short side to the
    resolution, bicubic, centre crop), the others random resized crops + flips (+ AugMix)."""

    def __init__(self, resolution: int, n_views: int, augmix: bool, mean: Sequence[float], std: Sequence[float],
                 severity: float = 1.0) -> None:
        if n_views < 1:
            raise UserValueError(f"TRAINER.TPT.N_VIEWS is {n_views}; it counts the original view, so it must be >= 1")
        self.resolution = int(resolution)
        self.n_views = int(n_views)
        self.augmix = bool(augmix)
        self.severity = float(severity)
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    # ------------------------------------------------------------------------------- shared parts
    def sample(self, rng: np.random.Generator, width: int, height: int) -> list[ViewParams]:
        """The random choices of the ``n_views - 1`` augmented views of a ``width`` x ``height`` image."""
        params = []
        for _ in range(self.n_views - 1):
            top, left, h, w = sample_crop(rng, width, height)
            view = ViewParams(top, left, h, w, flip=bool(rng.uniform() < 0.5))
            if self.augmix:
                view.chain_weights = tuple(float(x) for x in np.float32(rng.dirichlet([1.0] * AUGMIX_CHAINS)))
                view.mix = float(np.float32(rng.beta(1.0, 1.0)))
                for _ in range(AUGMIX_CHAINS):
                    depth = int(rng.integers(1, AUGMIX_MAX_DEPTH + 1))
                    chain = []
                    for _ in range(depth):
                        op = int(rng.integers(len(AUGMIX_OPS)))
                        chain.append((op, AUGMIX_OPS[op][1](rng, self.severity, self.resolution)))
                    view.chains.append(chain)
            params.append(view)
        return params

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(..., 3, H, W)`` → CLIP-normalised float32."""
        pixels = pixels.float().div_(255) if pixels.dtype == torch.uint8 else pixels.float().clone()
        return pixels.sub_(self.mean.to(pixels.device)).div_(self.std.to(pixels.device))

    def original(self, img: Image.Image) -> torch.Tensor:
        """View 0: short side to the resolution (bicubic), centre crop, normalised ``(3, R, R)``."""
        r = self.resolution
        w, h = img.size
        if w <= h:
            size = (r, int(r * h / w))
        else:
            size = (int(r * w / h), r)
        img = img.resize(size, Image.BICUBIC)
        left = round((size[0] - r) / 2.0)
        top = round((size[1] - r) / 2.0)
        with single_thread():  # one small image: a thread pool only adds waits (vlprompt.threads)
            return self.preprocess(_pil_to_uint8(img.crop((left, top, left + r, top + r))))

    # ---------------------------------------------------------------------------- PIL executor
    def views(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        """All ``n_views`` views ``(N, 3, R, R)`` made with PIL, as the reference does (one CPU thread: the
        per-view tensor work is too small for torch's pool, which on a busy machine makes it wait)."""
        with single_thread():
            return torch.cat([self.original(img)[None], self.render_pil(img, self.sample(rng, *img.size))])

    def render_pil(self, img: Image.Image, params: Sequence[ViewParams]) -> torch.Tensor:
        """The augmented views ``(len(params), 3, R, R)`` described by ``params``, made with PIL."""
        out = []
        r = self.resolution
        for view in params:
            crop = img.crop((view.left, view.top, view.left + view.width, view.top + view.height))
            crop = crop.resize((r, r), Image.BILINEAR)
            if view.flip:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            plain = self.preprocess(_pil_to_uint8(crop))
            if not view.chains:
                out.append(plain)
                continue
            mix = torch.zeros_like(plain)
            for weight, chain in zip(view.chain_weights, view.chains):
                augmented = crop
                for op, value in chain:
                    augmented = apply_op_pil(augmented, AUGMIX_OPS[op][0], value)
                mix += weight * self.preprocess(_pil_to_uint8(augmented))
            out.append(view.mix * plain + (1 - view.mix) * mix)
        if not out:
            return torch.zeros(0, 3, r, r)
        return torch.stack(out)

    # ------------------------------------------------------------------------- device executor
    def render_device(self, image: torch.Tensor, params: Sequence[ViewParams]) -> torch.Tensor:
        """The augmented views ``(N-1, 3, R, R)`` of a uint8 image ``(3, H, W)``, made on its device.

        The same crops, flips and operations as :meth:`views`; resampling is torch's (antialiased bilinear,
        grid sampling) instead of PIL's, so pixels differ slightly (statistically equivalent views).
        """
        r = self.resolution
        if not params:
            return image.new_zeros((0, 3, r, r), dtype=torch.float32)
        crops = []
        for view in params:
            patch = image[:, view.top : view.top + view.height, view.left : view.left + view.width]
            resized = F.interpolate(patch[None].float(), size=(r, r), mode="bilinear", antialias=True,
                                    align_corners=False)[0]
            crops.append(resized)
        crops = _to_uint8(torch.stack(crops))
        flips = torch.tensor([view.flip for view in params], device=image.device)
        crops = torch.where(flips[:, None, None, None], crops.flip(-1), crops)
        plain = self.preprocess(crops)
        if not params[0].chains:
            return plain
        n, chains = len(params), AUGMIX_CHAINS
        work = crops.repeat_interleave(chains, dim=0)  # (n * chains, 3, R, R): chain c of view v at v*chains+c
        flat = [view.chains[c] for view in params for c in range(chains)]
        for step in range(AUGMIX_MAX_DEPTH):
            for op_index, (name, _) in enumerate(AUGMIX_OPS):
                rows = [i for i, chain in enumerate(flat) if len(chain) > step and chain[step][0] == op_index]
                if rows:
                    index = torch.tensor(rows, device=image.device)
                    values = [flat[i][step][1] for i in rows]
                    work[index] = apply_op_tensor(work[index], name, values)
        weights = torch.tensor([view.chain_weights for view in params], device=image.device)
        mixed = (weights.view(n, chains, 1, 1, 1) * self.preprocess(work).view(n, chains, 3, r, r)).sum(1)
        m = torch.tensor([view.mix for view in params], device=image.device).view(n, 1, 1, 1)
        return m * plain + (1 - m) * mixed


def _pil_to_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.add(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor ``(3, H, W)`` (what :meth:`ViewMaker.render_device` takes)."""
    return _pil_to_uint8(img)


# ------------------------------------------------------------------------- batched tensor operations
def apply_op_tensor(x: torch.Tensor, name: str, values: Sequence[float]) -> torch.Tensor:
    """One AugMix operation on a batch of uint8 images ``(M, 3, H, W)``, one value per image, with PIL's
    definitions (per-channel histogram operations; affine maps with bilinear sampling and black outside)."""
    device = x.device
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    if name == "posterize":
        shift = 8 - torch.tensor([int(v) for v in values], device=device, dtype=torch.int32)
        mask = (0xFF & ~((1 << shift) - 1)).to(torch.uint8)
        return x & mask.view(-1, 1, 1, 1)
    if name == "solarize":
        threshold = torch.tensor(values, device=device).view(-1, 1, 1, 1)
        return torch.where(x.float() >= threshold, 255 - x, x)
    size = x.shape[-1]
    coefficients = torch.tensor([affine_coefficients(name, v, size) for v in values], device=device,
                                dtype=torch.float32)
    return _affine(x, coefficients)


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(2)
    lo = flat.amin(-1).float()[..., None, None]
    hi = flat.amax(-1).float()[..., None, None]
    scale = 255.0 / (hi - lo).clamp(min=1)
    stretched = (x.float() * scale - lo * scale).floor().clamp(0, 255).to(torch.uint8)
    return torch.where(hi > lo, stretched, x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    m, c = x.shape[:2]
    flat = x.reshape(m * c, -1).long()
    hist = torch.zeros(m * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last_value = flat.amax(-1)
    last_count = hist.gather(1, last_value[:, None]).squeeze(1)
    step = (hist.sum(-1) - last_count) // 255
    exclusive = hist.cumsum(-1) - hist
    lut = ((step // 2)[:, None] + exclusive) // step.clamp(min=1)[:, None]
    identity = torch.arange(256, device=x.device).expand(m * c, -1)
    nonzero_bins = (hist > 0).sum(-1)
    lut = torch.where(((step > 0) & (nonzero_bins > 1))[:, None], lut.clamp(0, 255), identity)
    return lut.gather(1, flat).to(torch.uint8).reshape(x.shape)


def _affine(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """PIL's AFFINE transform: output pixel centre → input position; bilinear, 0 outside the image."""
    m, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32) + 0.5,
                            torch.arange(w, device=x.device, dtype=torch.float32) + 0.5, indexing="ij")
    a, b, c, d, e, f = (coefficients[:, i].view(m, 1, 1) for i in range(6))
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    grid = torch.stack([2 * x_in / w - 1, 2 * y_in / h - 1], dim=-1)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    # PIL truncates the interpolated value (its resize, by contrast, rounds).
    return (out * inside[:, None]).floor_().clamp_(0, 255).to(torch.uint8)
