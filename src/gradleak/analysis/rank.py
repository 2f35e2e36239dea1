"""R-GAP's rank analysis (Zhu and Blaschko, ICLR 2021, sec. 4): how much each layer discards.

R-GAP recovers a layer's input ``x`` (``unknowns`` = input size x batch size) from two blocks
of linear equations: the *gradient constraints* ``dL/dW = sum_b delta_b (x) x_b`` (one per
weight, eq. 8) and the *weight constraints* ``W x_b = z_b`` (one per output and sample, eq. 9,
available only when the activation after the layer is invertible, so that ``z`` follows from the
layer above). When the stacked system's rank is below the number of unknowns, the gradient
cannot determine the input: ``unknowns - rank`` directions are discarded, whatever the attack.

The rank is computed at the observed weights and at a generic ``delta`` (seeded Gaussian; for
the output layer with columns summing to zero, as softmax cross-entropy's do), which gives the
rank the system has for almost every input. It is split exactly as
``rank [G; F] = rank G + rank (F N)``, with ``N`` a basis of the null space of the gradient block
``G``: the gradient block of a convolution is one small matrix ``D`` (``C_out k^2 x B H W``) per
input channel, and of a fully-connected layer ``Delta (x) I`` (closed form). Only ``F N`` needs a
large eigenvalue problem; above ``max_exact`` columns the rank is replaced by the upper bound
``min(unknowns, rank G + min(rows, cols of F N))`` and ``method`` says ``"bound"``. Convolutions
on more than :data:`MAX_EXACT_PIXELS` pixels (whose ``D`` alone would take gigabytes) count the
generic ranks instead, also marked ``"bound"``.

As in R-GAP, each sample's ``delta`` counts as known (the recursion supplies it for a batch of
one). For ``B > 1`` the deltas are unknown too, so the rank is an upper bound on what the
averaged gradient determines; at the output layer softmax's ``Delta`` has rank at most
``min(B, K - 1)``, which already discards inputs once ``B >= K``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.errors import GradleakError
from gradleak.gradient.linear import conv_gradient_operator
from gradleak.gradient.structure import INVERTIBLE, Layer, feedforward_layers, linear_layers
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

RTOL = 1e-5
MAX_EXACT_PIXELS = 4096
"""Largest input (H x W) of a convolution whose gradient operator is built (64 x 64)."""
"""Numerical rank: singular values above ``RTOL`` times the largest count."""


def layer_rank_analysis(
    source: Observation | ImageClassifier,
    batch_size: int | None = None,
    *,
    max_exact: int = 3000,
    seed: int = 0,
) -> list[dict]:
    """Per-layer unknowns, equations and rank of R-GAP's linear systems.

    Args:
        source: an observation (its model and weights, and its batch size by default) or a model.
        batch_size: samples in the batch (default: the observation's, or 1 for a model).
        max_exact: largest null-space dimension for which the rank is computed exactly.
        seed: seed of the generic ``delta``.

    Returns:
        One dict per conv/FC layer, input to output: ``name``, ``kind`` (``"conv"``/``"fc"``),
        ``unknowns``, ``gradient_equations``, ``weight_equations``, ``equations`` (their sum),
        ``rank``, ``discarded`` (``max(0, unknowns - rank)``), ``discarded_fraction``,
        ``rank_deficient``, ``method`` (``"exact"``, ``"kronecker"`` or ``"bound"``) and ``note``.

    Networks that are not a plain chain of layers and invertible activations (pooling,
    BatchNorm, ReLU, skip connections) are analysed layer by layer with gradient constraints
    only, and every row's ``note`` says why.

    Examples::
        >>> rows = layer_rank_analysis(build_model("rgap_cnn"), batch_size=1)
        >>> [(r["name"], r["unknowns"], r["rank"]) for r in rows]
    """
    if isinstance(source, Observation):
        model = source.build_model()
        batch_size = source.batch_size if batch_size is None else batch_size
    elif isinstance(source, ImageClassifier):
        model = source
        batch_size = 1 if batch_size is None else batch_size
    else:
        raise GradleakError(f"rank analysis needs an Observation or a model, got {type(source)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise GradleakError(f"batch size must be a positive integer, got {batch_size!r}")
    try:
        stages = feedforward_layers(model, require_invertible=False, what="rank analysis")
        chain_note = ""
    except GradleakError as err:
        stages = linear_layers(model)
        chain_note = f"gradient constraints only: {err}"
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i, stage in enumerate(stages):
        output = i == len(stages) - 1 and not chain_note
        weights_known = not chain_note and not output and isinstance(stage.activation, INVERTIBLE)
        note = chain_note
        if output:
            note = "output layer: no weight constraints (logits unknown); the loss fixes the scale"
        elif not chain_note and not weights_known:
            note = f"no weight constraints: {type(stage.activation).__name__} is not invertible"
        weight = stage.layer.weight.detach().double()
        row = _analyse(stage, weight, batch_size, weights_known, output, max_exact, generator)
        row["note"] = note
        rows.append(row)
    return rows


def _analyse(
    stage: Layer,
    weight: torch.Tensor,
    batch: int,
    weights_known: bool,
    output: bool,
    max_exact: int,
    generator: torch.Generator,
) -> dict:
    n = math.prod(stage.in_shape)
    unknowns = n * batch
    weight_equations = math.prod(stage.out_shape) * batch if weights_known else 0
    delta = torch.randn(batch, *stage.out_shape, generator=generator, dtype=torch.float64)
    if output:
        delta -= delta.mean(dim=1, keepdim=True)
    method = "exact"
    if isinstance(stage.layer, nn.Linear):
        # G = Delta (x) I_n, F = I_B (x) W: rank = r n + (B - r) rank W (Kronecker sum).
        delta_rank = _rank(delta)
        rank = delta_rank * n
        if weights_known:
            rank += (batch - delta_rank) * _rank(weight)
        method = "kronecker"
    elif math.prod(stage.in_shape[1:]) > MAX_EXACT_PIXELS:
        # The operator has (H W)^2 entries per image: count with the generic ranks instead.
        pixels = math.prod(stage.in_shape[1:])
        d_rank = min(batch * pixels, stage.layer.out_channels * math.prod(stage.layer.kernel_size))
        channels = stage.in_shape[0]
        rank = channels * d_rank
        if weights_known:
            rank += min(weight_equations, channels * (batch * pixels - d_rank))
        method = "bound"
    else:
        d_t = torch.cat([conv_gradient_operator(stage.layer, stage.in_shape, d) for d in delta])
        # d_t: (B H W, C_out k^2); the gradient block is C_in copies of D = d_t^T.
        d_rank = _rank_of_gram(d_t)
        channels = stage.in_shape[0]
        rank = channels * d_rank
        null_dim = d_t.shape[0] - d_rank
        if weights_known and null_dim:
            if channels * null_dim <= max_exact:
                null = torch.linalg.svd(d_t, full_matrices=True).U[:, d_rank:]
                rank += _rank_of_gram(_forward_on_null(stage, weight, null, batch))
            else:
                rank += min(weight_equations, channels * null_dim)
                method = "bound"
    rank = min(rank, unknowns)
    gradient_equations = weight.numel()
    discarded = max(0, unknowns - rank)
    return {
        "name": stage.name,
        "kind": stage.kind,
        "unknowns": unknowns,
        "gradient_equations": gradient_equations,
        "weight_equations": weight_equations,
        "equations": gradient_equations + weight_equations,
        "rank": rank,
        "discarded": discarded,
        "discarded_fraction": discarded / unknowns,
        "rank_deficient": rank < unknowns,
        "method": method,
    }


def _forward_on_null(
    stage: Layer, weight: torch.Tensor, null: torch.Tensor, batch: int
) -> torch.Tensor:
    """``F N``: the weight constraints applied to the null space of the gradient block.

    ``null`` (``B H W x m``) spans, for each input channel separately, the inputs that the
    gradient constraints do not see; the result has one column per (channel, null vector).
    """
    layer = stage.layer
    channels, height, width = stage.in_shape
    images = null.T.reshape(-1, 1, height, width)  # (m B, 1, H, W)
    columns = []
    for c in range(channels):
        out = F.conv2d(
            images, weight[:, c : c + 1], stride=layer.stride, padding=layer.padding
        )  # (m B, C_out, H', W')
        columns.append(out.reshape(null.shape[1], -1))  # (m, B C_out H' W')
    return torch.cat(columns).T


def _rank(matrix: torch.Tensor) -> int:
    if matrix.numel() == 0:
        return 0
    values = torch.linalg.svdvals(matrix.reshape(matrix.shape[0], -1))
    return int((values > RTOL * values.max()).sum()) if values.max() > 0 else 0


def _rank_of_gram(matrix: torch.Tensor) -> int:
    """Numerical rank from the eigenvalues of the smaller Gram matrix (cheaper than an SVD)."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    values = torch.linalg.eigvalsh(gram)
    top = values.max()
    return int((values > (RTOL**2) * top).sum()) if top > 0 else 0
