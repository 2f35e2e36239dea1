"""He et al. (2016, Sec. 4.2) CIFAR ResNets 20/32/44/56 with option-A shortcuts.

Module names match the shared pretrained files (akamaster/pytorch_resnet_cifar10):
``conv1, bn1, layer1..layer3.{i}.{conv1,bn1,conv2,bn2}, linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.models.registry import register
from gradleak.models.resnet import ResNet


class PadShortcut(nn.Module):
    """Option A: subsample ``x[:, :, ::s, ::s]`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


def pad_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity, or :class:`PadShortcut` when the block changes shape."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return PadShortcut(in_planes, planes, stride)


def _builder(depth: int):
    blocks = (depth - 2) // 6

    def build(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
        net = ResNet(
            [width, 2 * width, 4 * width],
            [blocks] * 3,
            pad_shortcut,
            num_classes=num_classes,
            in_channels=in_channels,
        )
        for m in net.modules():  # He initialization, as in the paper
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
        return net

    build.__doc__ = f"ResNet-{depth}: 3 stages of {blocks} BasicBlocks, widths w, 2w, 4w."
    return build


# One literal registration per depth: `gradleak list` reads them without importing torch.
_CIFAR = {"width": 16, "normalization": "imagenet", "pretrained": True}
register("resnet20", description="He et al. CIFAR ResNet-20; pretrained", **_CIFAR)(_builder(20))
register("resnet32", description="He et al. CIFAR ResNet-32; pretrained", **_CIFAR)(_builder(32))
register("resnet44", description="He et al. CIFAR ResNet-44; pretrained", **_CIFAR)(_builder(44))
register("resnet56", description="He et al. CIFAR ResNet-56; pretrained", **_CIFAR)(_builder(56))
