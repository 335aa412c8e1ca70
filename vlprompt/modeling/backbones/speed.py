"""Inference-time transforms of a frozen image tower: the same function, computed faster.

* **BatchNorm folding**: a frozen BatchNorm after a convolution is an affine map per channel, so it is
  folded into the convolution's weight and bias (``w·γ/σ``, ``(b − μ)·γ/σ + β``). The result equals the
  unfused tower up to float rounding (not bit for bit), which the tests check at fp32 tolerance.
* **Channels-last**: a tower that was folded (a convolutional one) runs on NHWC tensors, the layout
  oneDNN's and cuDNN's fastest convolutions use; the arithmetic is the same, only the memory order.
* **oneDNN for every convolution on the CPU**: at one thread and fewer than 16 images per pass, torch
  sends 1x1 convolutions to its generic im2col path, 20-30 % slower than oneDNN's kernel on the chunks
  the view encoder uses (same result up to float rounding), so the folded tower calls oneDNN directly
  there (:class:`OneDnnConv2d`).

Only towers whose structure is known here are folded: CLIP's ``ModifiedResNet`` (OpenAI's ``clip`` and
open_clip share it), whose ``forward`` applies ``bn{k}`` straight to ``conv{k}``'s output, and any
``nn.Sequential`` (a convolution followed by a BatchNorm in one is always that data flow). A tower with
nothing to fold (a ViT, whose attention already runs through ``scaled_dot_product_attention``) is returned
as it is, so no memory is spent on a copy.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["ChannelsLast", "OneDnnConv2d", "fold_batchnorm", "inference_image_encoder"]

# Classes whose forward applies bn{k} directly to conv{k}'s output (clip.model and open_clip.modified_resnet).
SIBLING_CONV_BN_CLASSES = ("ModifiedResNet", "Bottleneck")


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None)


def _fold_pairs(module: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv child name, BatchNorm child name) of every conv→BatchNorm pair in ``module``."""
    pairs = []
    for parent in module.modules():
        children = parent._modules
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs += [(parent, a, b) for a, b in zip(names, names[1:]) if _foldable(children[a], children[b])]
        elif type(parent).__name__ in SIBLING_CONV_BN_CLASSES:
            pairs += [(parent, name, "bn" + name[4:]) for name in children
                      if name.startswith("conv") and _foldable(children[name], children.get("bn" + name[4:]))]
    return pairs


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of the frozen ``module`` with every BatchNorm that follows a convolution folded into it (the
    BatchNorm becomes an identity); ``module`` itself when there is none."""
    if not _fold_pairs(module):
        return module
    folded = copy.deepcopy(module)
    with torch.no_grad():
        for parent, conv_name, bn_name in _fold_pairs(folded):
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            parent._modules[conv_name] = fuse_conv_bn_eval(conv.eval(), bn.eval()).requires_grad_(False)
            parent._modules[bn_name] = nn.Identity()
        for conv in folded.modules():
            if type(conv) is nn.Conv2d:  # a subclass of its own class: same parameters and state, another forward
                conv.__class__ = OneDnnConv2d
    return folded.eval()


class OneDnnConv2d(nn.Conv2d):
    """A frozen ``nn.Conv2d`` that always uses oneDNN's kernel for fp32 inference on the CPU (torch's own
    dispatch picks a slower generic path for 1x1 convolutions at one thread and small batches); anything
    else (gradients, autocast, other devices or dtypes, string padding) goes through ``nn.Conv2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not torch.is_grad_enabled() and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available() and not torch.is_autocast_enabled("cpu")):
            return torch.mkldnn_convolution(x, self.weight, self.bias, list(self.padding), list(self.stride),
                                            list(self.dilation), self.groups)
        return super().forward(x)


class ChannelsLast(nn.Module):
    """Runs ``encoder`` (converted to channels-last) on its input in channels-last memory order."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.contiguous(memory_format=torch.channels_last))


def inference_image_encoder(visual: nn.Module, channels_last: bool = True) -> nn.Module:
    """The frozen image tower ``visual`` prepared for encoding test images: BatchNorm folded and, for a
    convolutional tower, channels-last (``channels_last``). ``visual`` itself when there is nothing to do;
    otherwise a copy (the original, which other code may share, is left untouched)."""
    folded = fold_batchnorm(visual)
    if folded is visual:
        return visual
    return ChannelsLast(folded) if channels_last else folded
