"""Shapes from a dummy forward pass: feature sizes of convolutional bodies, layer traces."""

from __future__ import annotations

import torch
from torch import nn

from gradleak.devices import module_device
from gradleak.errors import GradleakError


def dummy_forward(module: nn.Module, shape: tuple[int, ...], hooks=()) -> torch.Tensor:
    """``module`` on one zero input of per-sample ``shape``, in eval mode without gradients (BN
    statistics untouched, the mode restored); ``hooks`` are ``(layer, forward_hook)`` pairs
    attached for this pass only."""
    handles = [layer.register_forward_hook(hook) for layer, hook in hooks]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return module(torch.zeros(1, *shape, device=module_device(module)))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()


def flat_features(body: nn.Module, in_channels: int, image_size: int, name: str) -> int:
    """Features per image after ``body``, from a dummy forward pass."""
    try:
        out = dummy_forward(body, (in_channels, image_size, image_size))
    except RuntimeError:
        raise GradleakError(f"image_size={image_size} is too small for {name}") from None
    if out.numel() == 0:
        raise GradleakError(f"image_size={image_size} is too small for {name}")
    return out.numel()
