"""The 4-layer fully connected network of the reference write-up, and its ReLU variant."""

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
    return _mlp4(nn.Sigmoid, in_channels * image_size * image_size, width, num_classes)


@register(
    "mlp4_relu",
    width=256,
    description="mlp4 with ReLU activations and CIFAR-10 input normalization (fc1..fc4)",
    normalization="cifar10",
)
def mlp4_relu(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """Flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3 -> ReLU -> fc4: ``mlp4``'s layers with the
    activation MLPs are usually trained with, and inputs normalized per channel (CIFAR-10
    statistics) as ReLU networks usually see them, so that each unit is on for about half the
    images rather than for nearly all or none. Behind ReLU a sample's gradient at ``fc1``'s
    output is exactly zero where the unit is off: ``fc_unmix`` recovers the batch from that
    sparsity, where solving for smooth activations stalls.
    """
    return _mlp4(nn.ReLU, in_channels * image_size * image_size, width, num_classes)


def _mlp4(act: type[nn.Module], inputs: int, width: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(inputs, width),
            act1=act(),
            fc2=nn.Linear(width, width),
            act2=act(),
            fc3=nn.Linear(width, width),
            act3=act(),
            fc4=nn.Linear(width, num_classes),
        )
    )
