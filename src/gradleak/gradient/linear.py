"""Closed-form reading of linear layers' gradients.

For ``z = W x + b`` and one sample, ``dL/dW = (dL/db) x^T`` (Geiping et al. 2020, eq. 2): the
layer's input is read off its weight and bias gradients (:func:`invert_linear_layer`). For a
convolution, the weight gradient is the output gradient correlated with the input's patches
(R-GAP eq. 8), one linear map of each input channel (:func:`conv_gradient_operator`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.errors import GradleakError


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


def conv_gradient_operator(
    layer: nn.Conv2d, in_shape: tuple[int, ...], delta: torch.Tensor
) -> torch.Tensor:
    """``D^T``, ``(H W, C_out k^2)``: ``dL/dW[:, c] = D x_c`` for every input channel ``c``.

    The weight gradient of a convolution is ``delta`` correlated with the patches of its input
    (R-GAP eq. 8): the same linear map ``D`` of each input channel's pixels.
    """
    _, height, width = in_shape
    pixels = height * width
    basis = torch.eye(pixels, dtype=delta.dtype).view(pixels, 1, height, width)
    patches = F.unfold(basis, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    delta = delta.reshape(delta.shape[0], -1)  # (C_out, L)
    return torch.einsum("pkl,ol->pok", patches, delta).reshape(pixels, -1)


def rows_as_inputs(
    weight_grad: torch.Tensor, bias_grad: torch.Tensor, tolerance: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's own reading of the layer's input, ``dW_i / db_i`` (float64).

    A row that one sample alone reaches holds that sample's input exactly (Geiping et al. 2020,
    eq. 2); a row that several reach holds their mixture. Rows whose ``|db_i|`` is below
    ``tolerance`` times the largest (no sample, or round-off) are skipped.

    Returns:
        ``(rows, inputs)``: the indices of the rows read, ``(R,)``, and their readings ``(R, in)``.
    """
    if weight_grad.ndim != 2 or bias_grad.shape != weight_grad.shape[:1]:
        raise GradleakError(
            f"weight gradient {list(weight_grad.shape)} and bias gradient "
            f"{list(bias_grad.shape)} are not those of one linear layer"
        )
    weight_grad, bias_grad = weight_grad.detach().double(), bias_grad.detach().double()
    largest = bias_grad.abs().max()
    if not largest > 0:
        return torch.zeros(0, dtype=torch.long), weight_grad.new_zeros(0, weight_grad.shape[1])
    rows = torch.nonzero(bias_grad.abs() > tolerance * largest).flatten()
    return rows, weight_grad[rows] / bias_grad[rows, None]
