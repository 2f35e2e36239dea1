"""The network a malicious server sends: its inserted block in front of the original model.

The server's modifications live in :mod:`gradleak.malicious`; this module holds only the
architecture, so that :func:`gradleak.models.build_model` can rebuild a model recorded with a
``server`` entry (the weights then come from the observation).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradleak.errors import GradleakError

#: The ceiling of a unit without one (ReLU): finite, so that weight files stay finite.
OPEN = float(torch.finfo(torch.float32).max)


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
