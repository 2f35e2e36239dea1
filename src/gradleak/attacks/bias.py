"""The bias attack on a fully-connected layer (Phong et al. 2017; Geiping et al. 2020, sec. 3).

For ``z = W x + b`` and one sample, ``dL/dW = (dL/db) x^T`` (the blog post's equation,
Geiping et al. 2020 eq. 2): every row ``i`` with ``dL/db_i != 0`` is the layer's input scaled by
``dL/db_i``. On the first layer of an MLP this is the (normalized) image, recovered exactly.

For a batch of ``B`` samples the averaged gradient is ``sum_b delta_b x_b^T / B`` and the same
formula returns one affine mixture ``sum_b w_b x_b`` (``sum_b w_b = 1``) of the batch's inputs,
with weights set by the per-sample bias gradients: not any single image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gradleak.attacks.base import Attack, ProgressCallback, Reconstruction
from gradleak.attacks.labels import batch_labels
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def invert_linear_layer(
    weight_grad: torch.Tensor, bias_grad: torch.Tensor, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Input ``x`` of a linear layer from its weight and bias gradients (batch of one).

    Least squares over the rows of ``dL/dW = (dL/db) x^T``:
    ``x = sum_i db_i dW_i / sum_i db_i^2``, so each row counts with weight ``db_i^2`` and rows
    with tiny bias gradients (where ``dW_i / db_i`` would divide by round-off) barely count.

    Args:
        weight_grad: ``(out_features, in_features)``.
        bias_grad: ``(out_features,)``.
        dtype: dtype of the computation and of the result.

    Returns:
        ``(in_features,)``; for a batch, the mixture described in the module docstring.

    Raises:
        GradleakError: if the shapes do not fit or the bias gradient is zero.
    """
    if weight_grad.ndim != 2 or bias_grad.shape != weight_grad.shape[:1]:
        raise GradleakError(
            f"weight gradient {list(weight_grad.shape)} and bias gradient "
            f"{list(bias_grad.shape)} are not those of one linear layer"
        )
    weight_grad, bias_grad = weight_grad.detach().to(dtype), bias_grad.detach().to(dtype)
    energy = bias_grad.pow(2).sum()
    if not energy > 0:
        raise GradleakError("the bias gradient is zero: the layer's input cannot be recovered")
    # Rescale first: squares of float32-sized gradients (~1e-20) would underflow in float32.
    scale = bias_grad.abs().max()
    return (bias_grad / scale) @ weight_grad / (energy / scale)


def input_layer(model: ImageClassifier, name: str | None = None) -> tuple[str, nn.Linear]:
    """The fully-connected layer that sees the image (flattened), with a bias.

    Raises GradleakError if ``name`` (default: the network's first layer with parameters) is not
    a ``Linear`` with a bias whose input is the whole flattened image.
    """
    layers = [(n, m) for n, m in model.net.named_modules() if list(m.parameters(recurse=False))]
    if not layers:
        raise GradleakError(f"model '{model.config.get('name')}' has no layers with parameters")
    first_name = layers[0][0]
    name = first_name if name is None else name
    modules = dict(model.net.named_modules())
    if name not in modules:
        raise GradleakError(f"model '{model.config.get('name')}' has no layer {name!r}")
    layer = modules[name]
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        what = "a Linear without bias" if isinstance(layer, nn.Linear) else type(layer).__name__
        raise GradleakError(
            f"the bias attack needs a fully-connected layer with a bias; '{name}' is {what}"
        )
    if name != first_name or layer.in_features != math.prod(model.input_shape):
        raise GradleakError(
            f"the bias attack recovers the input of '{name}', which is not the image "
            f"(the first layer is '{first_name}'); it needs an MLP whose first layer is linear"
        )
    return name, layer


@dataclass(frozen=True)
class BiasSettings:
    """Settings of :class:`BiasAttack`.

    Attributes:
        layer: name of the first fully-connected layer in ``model.net`` (None: found).
        dtype: ``"float64"`` (default) or ``"float32"`` for the division.
        iterations, restarts: unused (closed form); kept for the uniform call.
    """

    layer: str | None = None
    dtype: str = "float64"
    iterations: int = 1
    restarts: int = 1


class BiasAttack(Attack):
    """Bias attack: the image read off the first fully-connected layer's gradients.

    Phong et al., "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption", 2017;
    Geiping et al., "Inverting Gradients", NeurIPS 2020, https://arxiv.org/abs/2003.14053 (sec. 3).
    :func:`invert_linear_layer` on the first layer gives the normalized image, mapped back to
    pixels through the model wrapper's mean and std. Exact for a batch of one. For ``B > 1`` every
    returned image is the same gradient-weighted mixture of the batch, and the reconstruction's
    ``notes["mixture"]`` is True.

    Labels: known when the threat model allows, else recovered analytically (iDLG at B = 1,
    count-aware batch label recovery otherwise).

    Shape:
        observation of ``B`` images (C, H, W) -> images (B, C, H, W) clamped to [0, 1], labels (B,).

    Examples::
        >>> reconstruction = BiasAttack()(observe(build_model("mlp4"), image, label))
        >>> psnr(reconstruction.images, image)  # float32 round-off only
    """

    name = "bias"
    defaults = BiasSettings()

    def reconstruct(
        self,
        observation: Observation,
        model: ImageClassifier,
        batch_size: int,
        settings: BiasSettings,
        generator: torch.Generator,
        callback: ProgressCallback | None,
    ) -> Reconstruction:
        if settings.dtype not in DTYPES:
            raise GradleakError(f"dtype must be one of {sorted(DTYPES)}, got {settings.dtype!r}")
        dtype = DTYPES[settings.dtype]
        name, _ = input_layer(model, settings.layer)
        x = invert_linear_layer(
            observation.gradients[f"{name}.weight"], observation.gradients[f"{name}.bias"], dtype
        )
        image = x.view(model.input_shape) * model.std[0].to(dtype) + model.mean[0].to(dtype)
        images = image.float().clamp(0, 1).unsqueeze(0).repeat(batch_size, 1, 1, 1)
        if callback is not None:
            callback(1, 1, float("nan"))
        return Reconstruction(
            images=images,
            labels=batch_labels(observation, model, batch_size),
            attack=self.name,
            iterations=1,
            notes={"mixture": batch_size > 1},
        )
