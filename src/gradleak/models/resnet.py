"""CIFAR-style residual networks (He et al. 2016, "Deep Residual Learning") and ResNet-18.

CIFAR variants keep full resolution at the stem: one 3x3 convolution, no max-pool. The
shortcut used when a block changes shape is pluggable (option A lives in ``resnet_cifar``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.models.registry import register

Shortcut = Callable[[int, int, int], nn.Module]


def projection_shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    """Option B: identity, or a strided 1x1 convolution + BN when the shape changes."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1 x)))) + s(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem ``conv1``/``bn1``, stages ``layer1..layerK`` of :class:`BasicBlock` (stride 2 at
    the start of every stage but the first), global average pooling and ``linear``.

    Args:
        widths: channels of each stage.
        depths: blocks in each stage.
        shortcut: ``(in_planes, planes, stride) -> module`` for the residual branch.
        num_classes, in_channels: logits and image channels.
    """

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        shortcut: Shortcut,
        *,
        num_classes: int,
        in_channels: int,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stages: list[str] = []
        in_planes = widths[0]
        for i, (planes, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            strides = [1 if i == 1 else 2] + [1] * (depth - 1)
            blocks = []
            for stride in strides:
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            self.stages.append(f"layer{i}")
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            out = getattr(self, stage)(out)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register(
    "resnet18",
    width=64,
    description="CIFAR ResNet-18: 3x3 stem, BasicBlocks [2,2,2,2], widths 64..512, BN",
)
def resnet18(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """ResNet-18 with stage widths ``width * (1, 2, 4, 8)`` and projection shortcuts."""
    return ResNet(
        [width, 2 * width, 4 * width, 8 * width],
        [2, 2, 2, 2],
        projection_shortcut,
        num_classes=num_classes,
        in_channels=in_channels,
    )
