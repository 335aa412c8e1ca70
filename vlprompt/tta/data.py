"""The test images of a TPT run as a torch Dataset of views (made in the loader's workers, or on the device)."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from vlprompt.engine.data import read_image
from vlprompt.tta.views import ViewMaker, image_rng, pil_to_tensor


class TPTViewDataset(Dataset):
    """Items ``indices`` of ``data`` (Datum list). Each gives ``views`` ``(N, 3, R, R)``; with ``on_device``
    the original view, the uint8 image and the sampled view parameters instead (views made on the device).

    With ``skip_corrupt`` (``DATALOADER.SKIP_CORRUPT_IMAGES``) an unreadable image comes out as None, which
    :func:`collate_views` leaves out (no other image is tuned in its place); ``skipped_indices`` lists them,
    across loader workers.
    """

    def __init__(self, data: Sequence, indices: Sequence[int], maker: ViewMaker, seed: int,
                 on_device: bool = False, skip_corrupt: bool = False) -> None:
        self.data = data
        self.indices = list(indices)
        self.maker = maker
        self.seed = seed
        self.on_device = on_device
        # One shared flag per position (inherited by the loader's workers) so their skips add up.
        self._skip_flags = multiprocessing.RawArray("b", len(self.indices)) if skip_corrupt else None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def skipped_indices(self) -> list[int]:
        """Indices (into ``data``) of the images skipped as unreadable so far."""
        if self._skip_flags is None:
            return []
        return [index for index, flag in zip(self.indices, self._skip_flags) if flag]

    def __getitem__(self, position: int) -> dict | None:
        index = self.indices[position]
        item = self.data[index]
        try:
            img = read_image(item.impath)
        except OSError as err:
            if self._skip_flags is None:
                raise
            self._skip_flags[position] = 1
            warnings.warn(f"Skipping unreadable image (DATALOADER.SKIP_CORRUPT_IMAGES): {err}", stacklevel=2)
            return None
        rng = image_rng(self.seed, index)
        out = {"index": index, "label": item.label}
        if self.on_device:
            out["original"] = self.maker.original(img)
            out["image"] = pil_to_tensor(img)
            out["params"] = self.maker.sample(rng, *img.size)
        else:
            out["views"] = self.maker.views(img, rng)
        return out


def collate_views(batch: list[dict | None]) -> dict | None:
    """Stack what has one shape for all images; keep the raw images and view parameters as lists. Skipped
    images (None) are left out; None when none is left."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    out = {"index": torch.tensor([b["index"] for b in batch]), "label": torch.tensor([b["label"] for b in batch])}
    if "views" in batch[0]:
        out["views"] = torch.stack([b["views"] for b in batch])
    else:
        out["original"] = torch.stack([b["original"] for b in batch])
        out["image"] = [b["image"] for b in batch]
        out["params"] = [b["params"] for b in batch]
    return out


def device_views(maker: ViewMaker, batch: dict, device: torch.device) -> torch.Tensor:
    """``(B, N, 3, R, R)`` views on ``device`` from an ``on_device`` batch: original + views made there."""
    views = []
    for original, image, params in zip(batch["original"], batch["image"], batch["params"]):
        augmented = maker.render_device(image.to(device, non_blocking=True), params)
        views.append(torch.cat([original.to(device)[None], augmented]))
    return torch.stack(views)
