"""Shapes without running the network where possible: feature sizes of convolutional bodies,
layer traces, and estimates of the memory a forward pass takes (bounds checked before a model
named by a file is built or run)."""

from __future__ import annotations

import torch
from torch import nn

from gradleak.devices import module_device
from gradleak.errors import GradleakError

# Layers that keep the shape of their input.
_SHAPE_KEEPING = (
    nn.modules.batchnorm._BatchNorm,
    nn.Identity,
    nn.Dropout,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
)


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


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _window(size: tuple[int, int], kernel, stride, padding, dilation=1, ceil=False):
    """Output ``(H, W)`` of a convolution or pooling window over ``size``."""
    kernel, stride, padding, dilation = map(_pair, (kernel, stride, padding, dilation))
    out = []
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        span = n + 2 * p - d * (k - 1) - 1
        if span < 0:
            return None
        out.append((-(-span // s) if ceil else span // s) + 1)
    return tuple(out)


def sequential_shape(body: nn.Module, shape: tuple[int, int, int]) -> tuple[int, ...] | None:
    """The per-sample output shape of a plain ``nn.Sequential`` of convolutions, poolings and
    shape-keeping layers on a ``(C, H, W)`` input, computed without running it (so that an
    absurd ``image_size`` costs nothing); ``None`` when a layer is not one of those, and
    ``(0,)`` when the input is too small for a window."""
    if not isinstance(body, nn.Sequential):
        return None
    channels, size = shape[0], (shape[1], shape[2])
    for layer in body:
        if isinstance(layer, nn.Conv2d):
            if layer.padding == "same":
                continue
            if isinstance(layer.padding, str):
                return None
            size = _window(size, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
            channels = layer.out_channels
        elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
            dilation = getattr(layer, "dilation", 1)
            stride = layer.stride or layer.kernel_size
            size = _window(
                size, layer.kernel_size, stride, layer.padding, dilation, layer.ceil_mode
            )
        elif not isinstance(layer, _SHAPE_KEEPING):
            return None
        if size is None or min(size) < 1:
            return (0,)
    return (channels, *size)


def flat_features(body: nn.Module, in_channels: int, image_size: int, name: str) -> int:
    """Features per image after ``body``: from its layers' arithmetic when it is a plain
    sequence of convolutions and poolings, else from a dummy forward pass."""
    shape = sequential_shape(body, (in_channels, image_size, image_size))
    if shape is None:
        try:
            shape = tuple(dummy_forward(body, (in_channels, image_size, image_size)).shape[1:])
        except RuntimeError:
            raise GradleakError(f"image_size={image_size} is too small for {name}") from None
    features = 1
    for n in shape:
        features *= int(n)
    if features == 0:
        raise GradleakError(f"image_size={image_size} is too small for {name}")
    return features


def forward_elements(net: nn.Module, shape: tuple[int, int, int]) -> int:
    """An estimate of the values one forward pass of one ``(C, H, W)`` image holds: the
    outputs of the network's layers, walked in the order they were registered (convolutions
    and poolings change the shape, linear layers produce their features, other layers keep
    the shape), without running anything. Meant for bounds on what a file may ask for, not
    for exact accounting."""
    channels, size = shape[0], (shape[1], shape[2])
    current = channels * size[0] * size[1]
    total = current
    for layer in net.modules():
        if next(layer.children(), None) is not None:
            continue  # containers: their leaves are counted
        if isinstance(layer, nn.Conv2d) and not isinstance(layer.padding, str):
            size = _window(size, layer.kernel_size, layer.stride, layer.padding, layer.dilation)
            size = size if size is not None and min(size) > 0 else (1, 1)
            channels = layer.out_channels
            current = channels * size[0] * size[1]
        elif isinstance(layer, nn.MaxPool2d | nn.AvgPool2d):
            stride = layer.stride or layer.kernel_size
            size = _window(size, layer.kernel_size, stride, layer.padding)
            size = size if size is not None and min(size) > 0 else (1, 1)
            current = channels * size[0] * size[1]
        elif isinstance(layer, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
            wanted = layer.output_size
            wanted = (wanted, wanted) if not isinstance(wanted, tuple | list) else wanted
            size = tuple(n if w is None else int(w) for n, w in zip(size, wanted, strict=False))
            current = channels * size[0] * size[1]
        elif isinstance(layer, nn.Linear):
            current = layer.out_features
        total += current
    return total
