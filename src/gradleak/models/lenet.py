"""The LeNet variant of DLG / iDLG (Zhu et al. 2019, "Deep Leakage from Gradients")."""

from __future__ import annotations

import torch
from torch import nn

from gradleak.models._shape import flat_features
from gradleak.models.registry import register


class LeNet(nn.Module):
    """Three 5x5 sigmoid convolutions (strides 2, 2, 1) and one linear layer.

    As in DLG (github.com/mit-han-lab/dlg, ``models/vision.py``): no pooling, sigmoid
    activations and every weight and bias drawn from U(-0.5, 0.5), which makes the gradient
    of a single image easy to invert. ``width`` is the number of channels (12 in DLG).
    """

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(width, width, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(flat_features(self.body, in_channels, image_size, "lenet"), num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


register(
    "lenet",
    width=12,
    description="DLG/iDLG LeNet: 3 sigmoid 5x5 convs, U(-0.5, 0.5) init, raw [0,1] input",
    normalization="none",
)(LeNet)
