"""Per-image test-time prompt tuning on cached view features, for a batch of images with independent prompts.

The image encoder is frozen, so each image's N views are encoded once and their features reused for
every step and for the final prediction (view 0 is the original). The contexts of B images form one
``(B, ...)`` parameter: the loss is the sum of the images' losses, so each image's gradient is its own, and
AdamW works element by element, so one optimiser over the batch is B independent optimisers. A fresh
optimiser per batch is TPT's reset before every image.

When every image starts from the same context (words or CoOp), the first step's text features are the
same for all of them: the text tower runs forward once per class set, its graph is kept, and each image
only back-propagates its own gradient through it, which saves one of the four text passes per image.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.modeling.heads import normalize, scaled_logits
from vlprompt.modeling.prompts import PromptLearner
from vlprompt.tta.objective import marginal_entropy, select_confident

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TPTSettings:
    """TPT's hyper-parameters (the reference's defaults); ``amp`` runs the forward passes under autocast in
    ``amp_dtype`` (``float16`` as the reference on a GPU, with its loss scaler; or ``bfloat16``)."""

    n_views: int = 64
    selection_p: float = 0.1
    steps: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.01  # torch.optim.AdamW's default, which the reference keeps
    amp: bool = False
    amp_dtype: str = "float16"


@dataclass
class TuneResult:
    """``logits`` ``(B, n_cls)`` of the original views with the tuned prompts; ``ctx`` the tuned contexts;
    ``selected`` ``(B, k)`` the confident views chosen at the first step; ``loss`` per image ``(B,)``."""

    logits: torch.Tensor
    ctx: torch.Tensor
    selected: torch.Tensor | None
    loss: torch.Tensor | None


class PromptTuner:
    """TPT for one class set: ``learner`` holds its prompt pieces, ``text_encoder`` is a
    :class:`~vlprompt.modeling.text_encoder.PromptTextEncoder`, ``logit_scale`` CLIP's (already exponentiated)."""

    def __init__(self, learner: PromptLearner, text_encoder: nn.Module, logit_scale: torch.Tensor,
                 settings: TPTSettings, scaler: torch.amp.GradScaler | None = None,
                 share_first_step: bool = True,
                 objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        self.learner = learner
        self.text_encoder = text_encoder
        self.logit_scale = logit_scale.detach().float()
        self.settings = settings
        self.scaler = scaler
        self.share_first_step = share_first_step
        # Per-image loss of the chosen views' logits (B, k, C) and the text features (B, C, E): TPT's entropy
        # of the averaged prediction unless a method brings its own (C-TPT adds a text-feature term).
        self.objective = objective or (lambda chosen, text: marginal_entropy(chosen))
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (ctx0, leaf, text graph)

    def autocast(self, device: torch.device):
        if self.settings.amp:
            return torch.autocast(device_type=device.type, dtype=getattr(torch, self.settings.amp_dtype))
        return contextlib.nullcontext()

    def text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """Normalised class text features ``(B, n_cls, E)`` for contexts ``(B, ...)``."""
        prompts = self.learner.assemble(ctx)
        features = self.text_encoder(prompts, self.learner.tokenized_prompts,
                                     shared_prefix=self.learner.shared_prefix_length)
        return normalize(features.float())

    def logits(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, V, n_cls)`` logits of normalised view features ``(B, V, E)`` against ``text`` ``(B, n_cls, E)``."""
        return scaled_logits(features.float(), text, self.logit_scale)

    def tune(self, features: torch.Tensor, init_ctx: torch.Tensor, same_start: bool = False) -> TuneResult:
        """Tune one context per image from ``init_ctx`` ``(B, ...)`` on its views' normalised features
        ``(B, N, E)`` and predict its original view (index 0) with the tuned context. ``same_start``: every
        image of this class set starts from the same context (words, CoOp), so the first step's text
        forward is shared."""
        settings = self.settings
        device = features.device
        ctx = nn.Parameter(init_ctx.detach().clone().float())
        optimizer = torch.optim.AdamW([ctx], lr=settings.lr, weight_decay=settings.weight_decay)
        selected, loss_per_image = None, None
        shared = same_start and self.share_first_step and settings.steps > 0
        if shared and not torch.equal(ctx, ctx[:1].expand_as(ctx)):
            raise ValueError("tune(same_start=True) was given different initial contexts for the images of a batch")
        for step in range(settings.steps):
            if step == 0 and shared:
                selected, loss_per_image, grad = self._shared_first_step(features, ctx[0].detach())
                optimizer.zero_grad(set_to_none=True)
                ctx.grad = grad
                if self.scaler is not None:
                    self.scaler.step(optimizer)
                    self.scaler.update()
                else:
                    optimizer.step()
                continue
            with self.autocast(device):
                text = self.text_features(ctx)
                if selected is None:
                    logits = self.logits(features, text)
                    selected = select_confident(logits.detach(), settings.selection_p)
                    chosen = logits.gather(1, selected[..., None].expand(-1, -1, logits.shape[-1]))
                else:  # later steps reuse the first step's views, so only those are scored
                    view_index = selected[..., None].expand(-1, -1, features.shape[-1])
                    chosen = self.logits(features.gather(1, view_index), text)
            loss_per_image = self.objective(chosen, text)
            loss = loss_per_image.sum()  # images are independent: each context gets its own gradient
            optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(optimizer)
                self.scaler.update()
            else:
                loss.backward()
                optimizer.step()
        with torch.no_grad(), self.autocast(device):
            text = self.text_features(ctx)
            logits = self.logits(features[:, :1], text)[:, 0]
        loss_per_image = None if loss_per_image is None else loss_per_image.detach()
        return TuneResult(logits.float(), ctx.detach(), selected, loss_per_image)

    def _shared_first_step(self, features: torch.Tensor, ctx0: torch.Tensor):
        """The first step for images that all start from ``ctx0``: one forward of the text tower (kept for
        the class set), then per image a backward of its own loss gradient. Returns (selected views, losses,
        context gradients ``(B, ...)``, loss-scaled under amp)."""
        device = features.device
        if self._first is None or not torch.equal(self._first[0], ctx0):
            leaf = ctx0[None].clone().requires_grad_(True)
            with self.autocast(device):
                text = self.text_features(leaf)  # (1, n_cls, E), its graph kept for every image
            self._first = (ctx0.clone(), leaf, text)
        _, leaf, text = self._first
        batch = features.shape[0]
        per_image = text.detach().expand(batch, -1, -1).clone().requires_grad_(True)
        with self.autocast(device):
            logits = self.logits(features, per_image)
        selected = select_confident(logits.detach(), self.settings.selection_p)
        chosen = logits.gather(1, selected[..., None].expand(-1, -1, logits.shape[-1]))
        loss_per_image = self.objective(chosen, per_image)
        loss = loss_per_image.sum()
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        (text_grad,) = torch.autograd.grad(loss, per_image)
        grads = [torch.autograd.grad(text, leaf, text_grad[b : b + 1], retain_graph=True)[0] for b in range(batch)]
        return selected, loss_per_image.detach(), torch.cat(grads).float()



@torch.no_grad()
def encode_views(image_encoder: nn.Module, views: torch.Tensor, chunk: int = 256,
                 amp: bool = False, amp_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Unnormalised image features ``(B, N, E)`` of views ``(B, N, 3, R, R)``, at most ``chunk`` per pass
    (under autocast in ``amp_dtype`` with ``amp``)."""
    batch, n = views.shape[:2]
    flat = views.flatten(0, 1)
    dtype = next(image_encoder.parameters()).dtype
    context = torch.autocast(device_type=flat.device.type, dtype=amp_dtype) if amp else contextlib.nullcontext()
    with context:
        parts = [image_encoder(flat[i : i + chunk].to(dtype)) for i in range(0, flat.shape[0], max(1, chunk))]
    return torch.cat(parts).float().view(batch, n, -1)


# glibc gives a freed block back to the OS (and the next image faults it in again, page by page) when it
# was mmapped, i.e. larger than the mmap threshold, or when the heap's free top exceeds the trim threshold.
# 32 MiB is the largest mmap threshold glibc accepts; blocks up to it are served from the heap and reused.
HEAP_BLOCK_LIMIT = 32 * 2**20
HEAP_KEEP = 256 * 2**20  # free heap kept for the next image (the working set of one chunk of views)
HEAP_REUSE_ENV = "VLPROMPT_HEAP_REUSE"
_heap_reuse_set = False


def reuse_freed_memory() -> bool:
    """Make glibc keep freed blocks up to :data:`HEAP_BLOCK_LIMIT` and up to :data:`HEAP_KEEP` of free heap
    for reuse, so encoding the next image's views does not fault its working set in again (millions of
    minor page faults per image otherwise). Once per process; Linux with glibc only; ``VLPROMPT_HEAP_REUSE=0``
    turns it off. Returns whether the setting is in effect."""
    global _heap_reuse_set
    if _heap_reuse_set:
        return True
    if os.environ.get(HEAP_REUSE_ENV, "1").strip() in ("0", "false", "no") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    _heap_reuse_set = bool(mallopt(m_mmap_threshold, HEAP_BLOCK_LIMIT)) and bool(mallopt(m_trim_threshold, HEAP_KEEP))
    if _heap_reuse_set:
        log.debug("glibc malloc: mmap threshold %d, trim threshold %d", HEAP_BLOCK_LIMIT, HEAP_KEEP)
    return _heap_reuse_set


@torch.no_grad()
def largest_activation(image_encoder: nn.Module, resolution: int, device: torch.device | str = "cpu") -> int:
    """Bytes of the largest tensor any layer of ``image_encoder`` outputs for one ``resolution``² view."""
    sizes = [0]

    def note(module: nn.Module, inputs: tuple, output: object) -> None:
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                sizes.append(tensor.numel() * tensor.element_size())

    dtype = next(image_encoder.parameters()).dtype
    hooks = [module.register_forward_hook(note) for module in image_encoder.modules()]
    try:
        image_encoder(torch.zeros(1, 3, resolution, resolution, device=device, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return max(sizes)


class ViewEncoder:
    """Encodes test images' views with the frozen image tower, reusing memory across images.

    The tower is prepared for inference (BatchNorm folded into the convolutions, channels-last for a
    convolutional tower: :func:`~vlprompt.modeling.backbones.speed.inference_image_encoder`). On the CPU the
    views go through in chunks whose largest activation stays under :data:`HEAP_BLOCK_LIMIT` and glibc is
    asked to keep such blocks (:func:`reuse_freed_memory`), so every image reuses the previous image's
    memory instead of faulting fresh pages in. On a GPU (whose allocator caches) chunks are ``max_chunk``.
    """

    def __init__(self, visual: nn.Module, resolution: int, device: torch.device, max_chunk: int = 256,
                 amp: bool = False, fold: bool = True, amp_dtype: torch.dtype = torch.float16) -> None:
        from vlprompt.modeling.backbones.speed import inference_image_encoder

        self.encoder = inference_image_encoder(visual) if fold else visual
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.chunk = max(1, max_chunk)
        if torch.device(device).type == "cpu" and reuse_freed_memory():
            per_view = largest_activation(self.encoder, resolution, device)
            self.chunk = min(self.chunk, max(1, HEAP_BLOCK_LIMIT // max(per_view, 1)))

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        """Unnormalised features ``(B, N, E)`` of views ``(B, N, 3, R, R)``."""
        return encode_views(self.encoder, views, chunk=self.chunk, amp=self.amp, amp_dtype=self.amp_dtype)
