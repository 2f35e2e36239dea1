"""The ConvNet of Inverting Gradients (Geiping et al. 2020; ``ConvNet`` in inversefed/breaching)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gradleak.models._shape import flat_features
from gradleak.models.registry import register

# Output channels of conv0..conv7 as multiples of the width; "pool" is a 3x3 max-pool.
_PLAN = (1, 2, 2, 4, 4, 4, "pool", 4, 4, "pool")


@register(
    "convnet",
    width=64,
    description="Inverting Gradients ConvNet: 8 conv+BN+ReLU, 2 max-pools (Geiping et al. 2020)",
)
def convnet(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """conv0..conv7 (3x3, padding 1) each with BN and ReLU, ``MaxPool2d(3)`` after conv5 and
    conv7, then ``linear``; for 32x32 inputs the head sees ``36 * width`` features."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels, n_conv, n_pool = in_channels, 0, 0
    for step in _PLAN:
        if step == "pool":
            layers[f"pool{n_pool}"] = nn.MaxPool2d(3)
            n_pool += 1
            continue
        out = step * width
        layers[f"conv{n_conv}"] = nn.Conv2d(channels, out, kernel_size=3, padding=1)
        layers[f"bn{n_conv}"] = nn.BatchNorm2d(out)
        layers[f"relu{n_conv}"] = nn.ReLU()
        channels, n_conv = out, n_conv + 1
    features = flat_features(nn.Sequential(layers), in_channels, image_size, "convnet")
    layers["flatten"] = nn.Flatten()
    layers["linear"] = nn.Linear(features, num_classes)
    return nn.Sequential(layers)
