"""The block a malicious server inserts in front of the model it sends (imprint, trap weights).

Fowl et al. (ICLR 2022, "Robbing the Fed", sec. 3) and Boenisch et al. (EuroS&P 2023, "When the
Curious Abandon Honesty") both put a fully-connected layer on the flattened image before the
network. Here it is :class:`MeasurementBlock`: ``x + restore(relu(measure(x)))``, added to its
input so that the model the client trains still classifies (``restore`` is small). Every
``measure`` neuron that a single image activates holds that image in its gradient row:
``dL/dW_i = (dL/db_i) x`` (Geiping et al. 2020, eq. 2).

The block works on the network's (normalized) input; :func:`pixel_rows` turns a measurement
designed on pixels in [0, 1] into the block's weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.models.server_block import OPEN, MeasurementBlock, ModifiedNetwork

__all__ = [
    "OPEN",
    "MeasurementBlock",
    "ModifiedNetwork",
    "insert_block",
    "inserted_layer",
    "pixel_rows",
    "restore_weights",
    "to_pixels",
]


def insert_block(
    model: ImageClassifier,
    server: dict,
    measure: tuple[torch.Tensor, torch.Tensor],
    restore: tuple[torch.Tensor, torch.Tensor],
    ceiling: torch.Tensor | None = None,
) -> ImageClassifier:
    """A copy of ``model`` behind a :class:`MeasurementBlock` with these ``(weight, bias)``
    pairs (and ``ceiling``, default :data:`OPEN`); its config records ``server`` (what
    :func:`gradleak.models.build_model` needs to rebuild it: ``server["units"]`` neurons)."""
    if "server" in model.config:
        raise GradleakError(
            f"the model already carries the server modification {model.config['server']['name']!r}"
        )
    block = MeasurementBlock(model.input_shape, int(server["units"]))
    with torch.no_grad():
        for layer, (weight, bias) in ((block.measure, measure), (block.restore, restore)):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        if ceiling is not None:
            block.ceiling.copy_(ceiling)
    network = ModifiedNetwork(block, copy.deepcopy(model.net))
    out = ImageClassifier(network, {**model.config, "server": server})
    return out.to(model.mean.device).train(model.training)


def inserted_layer(model: ImageClassifier) -> nn.Linear:
    """The measurement layer of a model the server put a block in front of."""
    net = model.net
    if not isinstance(net, ModifiedNetwork) or not isinstance(net.inserted, MeasurementBlock):
        raise GradleakError(
            f"model '{model.config.get('name')}' has no block inserted by the server"
        )
    return net.inserted.measure


def pixel_rows(
    model: ImageClassifier, rows: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of a layer on the normalized input computing ``rows @ x + offsets``
    on the pixels ``x`` in [0, 1] (``x = std * x_normalized + mean`` per channel)."""
    channels, height, width = model.input_shape
    std = model.std.detach().cpu().double().view(channels, 1).expand(channels, height * width)
    mean = model.mean.detach().cpu().double().view(channels, 1).expand(channels, height * width)
    rows = rows.double()
    weight = rows * std.reshape(1, -1)
    bias = offsets.double() + rows @ mean.reshape(-1)
    return weight.float(), bias.float()


def to_pixels(model: ImageClassifier, inputs: torch.Tensor) -> torch.Tensor:
    """Flattened normalized inputs (N, C H W) as images (N, C, H, W) in pixels (unclamped)."""
    shape = (len(inputs), *model.input_shape)
    std, mean = model.std.detach().cpu().double(), model.mean.detach().cpu().double()
    return (inputs.double().view(shape) * std + mean).float()


def restore_weights(
    units: int, size: int, gain: float, generator: torch.Generator, shared: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``restore``'s ``(weight, bias)``: random unit columns times ``gain``, one column shared
    by every unit (``shared``: each image's gradient then reaches every unit with one factor, as
    imprint's bin differences need) or one per unit."""
    columns = torch.randn(size, 1 if shared else units, generator=generator, dtype=torch.float64)
    columns = columns / columns.norm(dim=0, keepdim=True) * gain
    return columns.expand(size, units).float().contiguous(), torch.zeros(size)
