"""Trap weights (Boenisch et al., EuroS&P 2023, "When the Curious Abandon Honesty: Federated
Learning Is Not Private", sec. IV).

The server puts ``neurons`` ReLU neurons on the image in front of the model with "trap" weights:
each neuron weighs a random half of the pixels negatively and the other half positively, the
positive weights scaled down by ``scale`` < 1, so that on non-negative pixels it rarely fires.
A neuron that exactly one image of the batch activates holds that image in its gradient row:
``x = (dL/dW_i) / (dL/db_i)``. The weights are designed on pixels in [0, 1] and folded through
the model's normalization. Every neuron reaches the network through its own random direction, so
that two neurons isolating one image give the same row, and mixtures do not.
"""

from __future__ import annotations

import math

import torch

from gradleak.errors import GradleakError
from gradleak.malicious.blocks import insert_block, pixel_rows, restore_weights
from gradleak.malicious.registry import ServerContext, register_server
from gradleak.models import ImageClassifier


@register_server(
    "trap",
    "Boenisch et al. 2023 (Curious Abandon Honesty): trap-weight neurons before the model",
    attack="trap_weights",
)
def trap(
    model: ImageClassifier,
    context: ServerContext,
    *,
    neurons: int = 1000,
    scale: float = 0.95,
    gain: float = 1e-3,
) -> ImageClassifier:
    """``model`` behind ``neurons`` trap-weight neurons.

    Args:
        neurons: trap neurons; more neurons isolate more images of a large batch.
        scale: positive weights are the negative ones' magnitudes times ``scale`` (< 1: the
            neuron's response to a uniform image is negative, it fires on few images).
        gain: norm of each neuron's direction back into the image (the model's change).
    """
    if not isinstance(neurons, int) or not 1 <= neurons <= 100_000:
        raise GradleakError(f"trap needs 1 to 100000 neurons, got {neurons!r}")
    if not isinstance(scale, int | float) or not 0 < scale <= 1:
        raise GradleakError(f"trap's scale must lie in (0, 1], got {scale!r}")
    if not isinstance(gain, int | float) or not 0 < gain <= 1:
        raise GradleakError(f"trap's gain must lie in (0, 1], got {gain!r}")
    size = math.prod(model.input_shape)
    magnitudes = torch.randn(neurons, size, generator=context.generator, dtype=torch.float64).abs()
    positive = torch.rand(neurons, size, generator=context.generator).argsort(1) < size // 2
    rows = torch.where(positive, float(scale) * magnitudes, -magnitudes) / math.sqrt(size)
    measure = pixel_rows(model, rows, torch.zeros(neurons, dtype=torch.float64))
    restore = restore_weights(neurons, size, float(gain), context.generator, shared=False)
    record = {"name": "trap", "neurons": neurons, "scale": scale, "gain": gain, "units": neurons}
    return insert_block(model, record, measure, restore)
