"""The CNN6 of R-GAP (Zhu and Blaschko 2021, "R-GAP: Recursive Gradient Attack on Privacy")."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gradleak.models._shape import flat_features
from gradleak.models.registry import register

# (output channels for width 12, kernel, stride, padding) of conv1..conv6, as in R-GAP's
# models/CNN6.py (github.com/JunyiZhu-AI/R-GAP).
_PLAN = ((12, 4, 2, 2), (36, 3, 2, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1))


@register(
    "rgap_cnn",
    width=12,
    description="R-GAP CNN6: 6 strided convs, leaky-ReLU 0.2, no pooling, no biases",
    normalization="none",
)
def rgap_cnn(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """conv1..conv6 (no bias) each followed by ``LeakyReLU(0.2)``, then ``fc`` (no bias).

    For 32x32 inputs the feature maps are 17, 9, 9, 9, 5, 5 pixels wide and ``fc`` sees 3200
    features. Channels scale with ``width`` (12 in R-GAP). PyTorch's default initialization and
    raw [0, 1] input, as in R-GAP's attack script. One difference: R-GAP ends in a single logit
    with a logistic loss; here ``fc`` has ``num_classes`` outputs for the cross-entropy loss of
    every gradleak observation.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i, (out, kernel, stride, padding) in enumerate(_PLAN, start=1):
        out = max(1, round(out * width / 12))
        layers[f"conv{i}"] = nn.Conv2d(
            channels, out, kernel_size=kernel, stride=stride, padding=padding, bias=False
        )
        layers[f"act{i}"] = nn.LeakyReLU(0.2)
        channels = out
    features = flat_features(nn.Sequential(layers), in_channels, image_size, "rgap_cnn")
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(features, num_classes, bias=False)
    return nn.Sequential(layers)
