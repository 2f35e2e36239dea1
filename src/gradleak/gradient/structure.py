"""Where a model's gradient can be read: its output layer, its first fully-connected layer, its
chain of linear layers and activations, its BatchNorm layers.

Every analysis and attack that reads a gradient in closed form finds its layers here, and says why
not when a model lacks them: each finder raises a :class:`GradleakError` naming the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.models._shape import dummy_forward

INVERTIBLE = (nn.LeakyReLU, nn.Sigmoid, nn.Tanh)
"""Activations whose input follows from their output (R-GAP's weight constraints need one)."""


def model_name(model: ImageClassifier) -> str:
    return str(model.config.get("name", type(model.net).__name__))


def output_layer(model: ImageClassifier) -> tuple[str, nn.Linear]:
    """The classifier's last fully-connected layer with one output per class (name in
    ``model.net``); labels are read from its gradient."""
    num_classes = model.config["num_classes"]
    found = [
        (name, m)
        for name, m in model.net.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not found:
        raise GradleakError(
            f"model '{model_name(model)}' has no fully-connected output layer with "
            f"{num_classes} outputs; analytic labels need one"
        )
    return found[-1]


@dataclass
class ImageLayer:
    """The fully-connected layer that reads the flattened image.

    Attributes:
        name: its name in ``model.net``; ``layer``: the module.
        index: its position among ``model.net``'s children when the network is an
            ``nn.Sequential`` (the layers after it are ``net[index + 1:]``), else None.
    """

    name: str
    layer: nn.Linear
    index: int | None


def image_layer(model: ImageClassifier, what: str = "this attack") -> ImageLayer:
    """The network's first layer with parameters, which must be an ``nn.Linear`` with a bias
    whose input is the whole flattened image (an MLP such as ``mlp4``); GradleakError naming
    ``what`` needs it otherwise."""
    first = next(
        ((n, m) for n, m in model.net.named_modules() if list(m.parameters(recurse=False))),
        None,
    )
    if first is None:
        raise GradleakError(f"model '{model_name(model)}' has no layers with parameters")
    name, layer = first
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        kind = "a Linear without bias" if isinstance(layer, nn.Linear) else type(layer).__name__
        raise GradleakError(
            f"{what} needs a network whose first layer is fully connected with a bias; "
            f"model '{model_name(model)}' starts with '{name}' ({kind})"
        )
    if layer.in_features != math.prod(model.input_shape):
        raise GradleakError(
            f"{what} needs a first layer that reads the whole image; '{name}' of model "
            f"'{model_name(model)}' has {layer.in_features} inputs, the image "
            f"{math.prod(model.input_shape)} values"
        )
    index = None
    if isinstance(model.net, nn.Sequential):
        index = next(i for i, child in enumerate(model.net.children()) if child is layer)
    return ImageLayer(name, layer, index)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ---------------------------------------------------------------------- feed-forward chains
@dataclass
class Layer:
    """One linear layer of a network and the activation after it.

    ``name`` is the layer's name in ``model.net``; ``in_shape``/``out_shape`` are per sample.
    ``activation`` is None for the output layer (and for layers found by :func:`linear_layers`).
    """

    name: str
    layer: nn.Conv2d | nn.Linear
    activation: nn.Module | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        return "conv" if isinstance(self.layer, nn.Conv2d) else "fc"


_REASONS: tuple[tuple[type, str], ...] = (
    (nn.modules.batchnorm._BatchNorm, "BatchNorm mixes the batch and is not a linear layer"),
    (nn.modules.pooling._MaxPoolNd, "max-pooling discards inputs"),
    (nn.modules.pooling._AvgPoolNd, "pooling is not supported"),
    (nn.modules.pooling._AdaptiveAvgPoolNd, "pooling is not supported"),
    (nn.modules.pooling._AdaptiveMaxPoolNd, "pooling is not supported"),
    (
        nn.ReLU,
        "ReLU is not invertible (negative pre-activations all map to 0, so the weight "
        "constraints W x = z are lost there); use leaky-ReLU, sigmoid or tanh",
    ),
)


def feedforward_layers(
    model: ImageClassifier, *, require_invertible: bool = True, what: str = "R-GAP"
) -> list[Layer]:
    """The network as a chain of conv/FC layers each followed by one activation.

    Accepts networks whose leaf modules, in registration order, are ``Conv2d``/``Linear`` layers,
    element-wise activations, ``Flatten`` and ``Identity``, and checks that chaining them
    reproduces ``model.net``'s output.

    Raises:
        GradleakError: for pooling, BatchNorm, ReLU (when ``require_invertible``), other modules,
            convolutions with groups or dilation, or a network that is not such a chain.
    """
    leaves = [(n, m) for n, m in model.net.named_modules() if not list(m.children())]
    layers: list[Layer] = []
    activations_ok = INVERTIBLE if require_invertible else (*INVERTIBLE, nn.ReLU)
    for name, module in leaves:
        if isinstance(module, nn.Conv2d | nn.Linear):
            if layers and layers[-1].activation is None:
                raise GradleakError(
                    f"{what} needs an activation between layers; '{layers[-1].name}' is "
                    f"followed directly by '{name}'"
                )
            _check_plain_convolution(module, name, what)
            layers.append(Layer(name, module, None, (), ()))
        elif isinstance(module, activations_ok):
            if not layers or layers[-1].activation is not None:
                raise GradleakError(f"{what}: activation '{name}' does not follow a layer")
            if isinstance(module, nn.LeakyReLU) and module.negative_slope <= 0:
                raise GradleakError(f"{what}: leaky-ReLU '{name}' needs a positive slope")
            layers[-1].activation = module
        elif isinstance(module, nn.Flatten | nn.Identity):
            continue
        else:
            reason = next((r for t, r in _REASONS if isinstance(module, t)), None)
            raise GradleakError(
                f"{what} cannot attack model '{model_name(model)}': layer '{name}' "
                f"({type(module).__name__}): "
                f"{reason or 'only conv/linear layers and invertible activations'}"
            )
    if not layers or not isinstance(layers[-1].layer, nn.Linear):
        raise GradleakError(f"{what} needs a fully-connected output layer")
    if layers[-1].activation is not None:
        raise GradleakError(f"{what} needs logits out of the last layer, not an activation")
    _infer_shapes(model, layers, what)
    return layers


def linear_layers(model: ImageClassifier, what: str = "rank analysis") -> list[Layer]:
    """Every conv/FC layer of any network, with per-sample shapes from one forward pass."""
    layers: list[Layer] = []
    hooks = []
    for name, module in model.net.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            _check_plain_convolution(module, name, what)

            def hook(mod, inputs, out, name=name):
                shapes = tuple(inputs[0].shape[1:]), tuple(out.shape[1:])
                layers.append(Layer(name, mod, None, *shapes))

            hooks.append((module, hook))
    dummy_forward(model, model.input_shape, hooks)
    return layers


def _check_plain_convolution(module: nn.Module, name: str, what: str) -> None:
    if isinstance(module, nn.Conv2d) and (
        module.groups != 1
        or tuple(module.dilation) != (1, 1)
        or module.padding_mode != "zeros"
        or isinstance(module.padding, str)
    ):
        raise GradleakError(
            f"{what} supports plain convolutions only; '{name}' uses groups, dilation or "
            f"non-zero padding"
        )


def _infer_shapes(model: ImageClassifier, layers: list[Layer], what: str) -> None:
    """Fill in per-sample shapes and check that the chain reproduces the network."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, *model.input_shape, generator=generator).to(model.mean.device)
    with torch.no_grad():
        expected = model(x)
        h = (x - model.mean) / model.std
        for layer in layers:
            if isinstance(layer.layer, nn.Linear):
                h = h.flatten(1)
            layer.in_shape = tuple(h.shape[1:])
            h = layer.layer(h)
            layer.out_shape = tuple(h.shape[1:])
            if layer.activation is not None:
                h = layer.activation(h)
    if h.shape != expected.shape or not torch.allclose(h, expected, rtol=1e-4, atol=1e-5):
        raise GradleakError(
            f"{what} needs a plain feed-forward network: chaining the layers of model "
            f"'{model_name(model)}' does not reproduce its output"
        )
