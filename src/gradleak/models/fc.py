"""The fully connected ReLU network of iLRG's label-recovery experiments (Ma et al., ICLR 2023)."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from gradleak.models.registry import register


@register(
    "fc_relu",
    width=300,
    description="iLRG's MNIST FC net: fc1 -> ReLU -> fc2 -> ReLU -> fc3, PyTorch default init",
    normalization="cifar10",
)
def fc_relu(*, num_classes: int, in_channels: int, image_size: int, width: int) -> nn.Module:
    """Flatten -> fc1 -> ReLU -> fc2 -> ReLU -> fc3 (``DNN(n_hidden=1, dim=300)`` in
    github.com/mankasto/iLRG ``models.py``), with PyTorch's default initialization.

    iLRG feeds MNIST normalized with mean 0.1307, std 0.3081: pass ``mean=(0.1307,),
    std=(0.3081,)`` to :func:`~gradleak.models.build_model` to reproduce it.
    """
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(in_channels * image_size * image_size, width),
            act1=nn.ReLU(),
            fc2=nn.Linear(width, width),
            act2=nn.ReLU(),
            fc3=nn.Linear(width, num_classes),
        )
    )
