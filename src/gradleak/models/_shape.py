"""Feature-size inference for the fully connected heads of convolutional bodies."""

from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import GradleakError


def flat_features(body: nn.Module, in_channels: int, image_size: int, name: str) -> int:
    """Features per image after ``body``, from a dummy forward in eval mode (BN stats untouched)."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError:
        raise GradleakError(f"image_size={image_size} is too small for {name}") from None
    finally:
        body.train(was_training)
    if out.numel() == 0:
        raise GradleakError(f"image_size={image_size} is too small for {name}")
    return out.numel()
