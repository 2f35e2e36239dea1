"""The 4-layer fully connected network of the reference write-up."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gradleak.models.registry import register


@register(
    "mlp4",
    width=256,
    description="4-layer MLP, sigmoid activations, every layer with bias (fc1..fc4)",
    normalization="none",
)
def mlp4(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """Flatten -> fc1 -> sigmoid -> fc2 -> sigmoid -> fc3 -> sigmoid -> fc4.

    Sigmoid is smooth, so second derivatives (needed to match gradients) stay informative where
    ReLU's vanish. Every ``Linear`` has a bias, which the analytic bias attack on ``fc1`` needs.
    """
    act = nn.Sigmoid
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(in_channels * image_size * image_size, width),
            act1=act(),
            fc2=nn.Linear(width, width),
            act2=act(),
            fc3=nn.Linear(width, width),
            act3=act(),
            fc4=nn.Linear(width, num_classes),
        )
    )
