"""The downstream model of breaching's imprint side (``imprint_breaching_side.py``): a linear
classifier on the flattened image, as gradleak's own model (``benchmarks/linear_classifier.py:
linear``), so that both imprint attacks read the same kind of network."""

from __future__ import annotations

from torch import nn


def linear(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes)
    )
