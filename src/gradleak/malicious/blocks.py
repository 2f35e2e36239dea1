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
import math

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier

#: The ceiling of a unit without one (ReLU): finite, so that weight files stay finite.
OPEN = float(torch.finfo(torch.float32).max)
INSERTED = "inserted"
ORIGINAL = "original"


class MeasurementBlock(nn.Module):
    """``x + restore(clamp(measure(flatten(x)), 0, ceiling))``, shaped like ``x``.

    ``ceiling`` (a buffer, one value per unit) is :data:`OPEN` for ReLU units; a lower one makes
    a unit respond only to inputs between its threshold and threshold + ceiling (a "sparse"
    bin: its gradient holds those images alone).

    Shape:
        - Input and output: ``(N, C, H, W)``; ``measure``: ``C H W -> units``; ``restore``:
          ``units -> C H W``.
    """

    def __init__(self, input_shape: tuple[int, int, int], units: int):
        super().__init__()
        size = math.prod(input_shape)
        self.measure = nn.Linear(size, units)
        self.restore = nn.Linear(units, size)
        self.register_buffer("ceiling", torch.full((units,), OPEN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.measure(x.flatten(1))
        hidden = torch.relu(z) - torch.relu(z - self.ceiling)
        return x + self.restore(hidden).view_as(x)


class ModifiedNetwork(nn.Module):
    """The server's block, then the original network (``inserted.*``, ``original.*``)."""

    def __init__(self, inserted: nn.Module, original: nn.Module):
        super().__init__()
        self.inserted = inserted
        self.original = original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.original(self.inserted(x))


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


def wrap_for_server(net: nn.Module, server: dict, input_shape: tuple[int, int, int]) -> nn.Module:
    """The network ``build_model`` returns for a config that records ``server``: behind a
    (freshly initialized) :class:`MeasurementBlock` when the modification inserted one."""
    if not isinstance(server, dict) or not isinstance(server.get("name"), str):
        raise GradleakError(f"a model's 'server' record must name its modification, got {server!r}")
    units = server.get("units")
    if units is None:
        return net
    if not isinstance(units, int) or isinstance(units, bool) or not 1 <= units <= 1_000_000:
        raise GradleakError(f"the server's inserted block needs 1 to 1e6 units, got {units!r}")
    return ModifiedNetwork(MeasurementBlock(input_shape, units), net)


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
