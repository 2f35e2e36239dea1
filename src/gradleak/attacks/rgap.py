"""R-GAP (Zhu and Blaschko, ICLR 2021), https://arxiv.org/abs/2010.07733.

"Recursive Gradient Attack on Privacy": for a feed-forward network of fully-connected and
convolutional layers with invertible activations and a batch of one, every layer's input solves a
linear system, recovered from the output layer down to the image:

- output layer (FC, cross-entropy): its weight gradient is ``delta x^T`` (rank one); the known or
  recovered label fixes the scale of ``x`` (see :func:`output_layer_input`);
- layer ``i`` below: knowing its output ``x_{i+1}`` and the next layer's ``delta_{i+1}``, the
  pre-activation is ``z_i = sigma^{-1}(x_{i+1})`` and ``delta_i = sigma'(z_i) * W_{i+1}^T
  delta_{i+1}`` (paper eq. 12); the unknown input ``x_i`` then satisfies the *gradient
  constraints* ``dL/dW_i = delta_i (x) x_i`` (eq. 8: for a convolution, ``delta`` correlated with
  the patches of ``x_i``) and the *weight constraints* ``W_i x_i = z_i - b_i`` (eq. 9), stacked and
  solved by least squares (eq. 10) in float64.

The stacked system is solved through its normal equations, assembled without materializing the
convolution matrices: the gradient block is the same small matrix ``D`` (``C_out k^2 x H W``) for
every input channel, and ``W^T W`` is a scatter of one small kernel Gram matrix. Unlike the
paper, both blocks are scaled to the size of their right-hand sides by default (``balance``):
unweighted, the weight constraints outweigh the gradient constraints by ``|W|^2 / |delta|^2``
(~1e8 on ``rgap_cnn``), and the float32 round-off in them then decides the solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gradleak.attacks.base import Attack, AttackContext, Reconstruction, requirement
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import BATCH_SIZE_ONE, FEEDFORWARD
from gradleak.errors import GradleakError
from gradleak.gradient.linear import conv_gradient_operator, invert_linear_layer
from gradleak.gradient.structure import Layer, feedforward_layers
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class RGAPSettings:
    """Settings of :class:`RGAP`.

    Attributes:
        labels: ``"auto"`` (known if the threat model allows, else recovered from the output
            layer's rank-one gradient), ``"known"`` or ``"analytic"``.
        dtype: ``"float64"`` (default) or ``"float32"`` for the linear algebra.
        weight_constraints: relative weight of the weight constraints ``W x = z`` against the
            gradient constraints.
        balance: scale both blocks of equations to the size of their right-hand sides first
            (default). ``balance=False, weight_constraints=1`` is the paper's unweighted system.
    """

    labels: str = "auto"
    dtype: str = "float64"
    weight_constraints: float = 1.0
    balance: bool = True


# ---------------------------------------------------------------------- activations
def _inverse(activation: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Pre-activation from the activation's output."""
    if isinstance(activation, nn.LeakyReLU):
        return torch.where(y >= 0, y, y / activation.negative_slope)
    tiny = torch.finfo(y.dtype).eps
    if isinstance(activation, nn.Sigmoid):
        y = y.clamp(tiny, 1 - tiny)
        return torch.log(y) - torch.log1p(-y)
    if isinstance(activation, nn.Tanh):
        return torch.atanh(y.clamp(-1 + tiny, 1 - tiny))
    raise GradleakError(f"R-GAP cannot invert activation {type(activation).__name__}")


def _derivative(activation: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sigma'(z) from the pre-activation z and the output y = sigma(z)."""
    if isinstance(activation, nn.LeakyReLU):
        return torch.where(
            z >= 0, torch.ones_like(z), torch.full_like(z, activation.negative_slope)
        )
    if isinstance(activation, nn.Sigmoid):
        return y * (1 - y)
    if isinstance(activation, nn.Tanh):
        return 1 - y * y
    raise GradleakError(f"R-GAP cannot differentiate activation {type(activation).__name__}")


# ---------------------------------------------------------------------- output layer
def output_layer_input(
    weight: torch.Tensor,
    weight_grad: torch.Tensor,
    bias_grad: torch.Tensor | None = None,
    label: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Input ``x`` and ``delta = dL/dz`` of a softmax cross-entropy output layer, batch of one.

    With a bias, ``delta`` is the bias gradient and ``x`` follows from
    :func:`~gradleak.gradient.linear.invert_linear_layer`. Without one, ``G = delta x^T`` gives
    ``x = s v`` only up to its scale ``s > 0`` (``v`` the unit top right singular vector of
    ``G``, signed so that ``u = G v = s delta`` is negative at the label). For every class ``j``
    but the label ``c``, ``delta_j = softmax(W x)_j``, i.e.
    ``log u_j = log s + log_softmax(s W v)_j``; ``s`` is the least-squares root of these ``K - 1``
    equations (Gauss-Newton on ``log s``). This replaces R-GAP's scalar inversion of ``u dl/du``
    for its single-logit logistic loss, and needs ``K >= 3``.

    The label, when not given, is the one class whose ``delta`` has the sign of ``p_c - 1 < 0``.

    Returns:
        ``(x, delta, label)``.
    """
    if bias_grad is not None:
        x = invert_linear_layer(weight_grad, bias_grad, weight_grad.dtype)
        return x, bias_grad, int(bias_grad.argmin()) if label is None else int(label)
    classes = weight_grad.shape[0]
    if classes < 3:
        raise GradleakError(
            "R-GAP needs an output bias or at least 3 classes to fix the scale of the last "
            "layer's input"
        )
    # Top singular pair of the rank-one G: one power step from its largest row.
    v = weight_grad[weight_grad.norm(dim=1).argmax()]
    v = weight_grad.T @ (weight_grad @ v)
    v = v / v.norm()
    u = weight_grad @ v
    if label is None:
        negative = u < 0
        if int(negative.sum()) == 1:
            label = int(negative.nonzero()[0, 0])
        elif int((~negative).sum()) == 1:
            label = int((~negative).nonzero()[0, 0])
        else:
            label = int(u.abs().argmax())
    if u[label] > 0:
        u, v = -u, -v
    others = torch.arange(classes) != label
    if not (u[others] > 0).all():
        raise GradleakError(
            "the output layer's gradient does not have the sign pattern of softmax "
            "cross-entropy for one sample; R-GAP needs batch size 1"
        )
    direction = weight @ v  # logits = s * direction
    log_u = torch.log(u[others])

    def residual(log_s: float) -> torch.Tensor:
        return log_u - log_s - torch.log_softmax(math.exp(log_s) * direction, 0)[others]

    # Two starting points: the slope of log u_j against the logits, and p_j ~ 1/K.
    centred = direction[others] - direction[others].mean()
    slope = float((centred * (log_u - log_u.mean())).sum() / (centred * centred).sum())
    starts = [math.log(float(u[others].sum()) * classes / (classes - 1))]
    if slope > 0:
        starts.append(math.log(slope))
    log_s = min(starts, key=lambda t: float(residual(t).pow(2).sum()))
    for _ in range(50):
        s = math.exp(log_s)
        p = torch.softmax(s * direction, 0)
        jacobian = -(1 + s * (direction[others] - (p * direction).sum()))
        r = residual(log_s)
        step = -float((jacobian * r).sum() / (jacobian * jacobian).sum())
        log_s += step
        if abs(step) < 1e-14:
            break
    s = math.exp(log_s)
    return s * v, u / s, label


# ---------------------------------------------------------------------- one layer
def conv_input_index(layer: nn.Conv2d, in_shape: tuple[int, ...]) -> torch.Tensor:
    """``(L, C_in k^2)`` flat input positions read at each output position, -1 for padding."""
    n = math.prod(in_shape)
    positions = torch.arange(1, n + 1, dtype=torch.float64).view(1, *in_shape)
    index = F.unfold(positions, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    return index[0].T.round().long() - 1


def conv_gram(layer: nn.Conv2d, in_shape: tuple[int, ...], weight: torch.Tensor) -> torch.Tensor:
    """``W^T W`` of a convolution written as a matrix on its (unpadded) input, ``(n, n)``.

    Output position ``l`` reads the input entries ``idx_l`` through the same kernel for every
    output channel, so ``W^T W`` is ``K = sum_o W_o W_o^T`` (``C_in k^2`` square) scattered onto
    ``idx_l x idx_l`` for every ``l``: no dense ``C_out L x n`` matrix is formed.
    """
    n = math.prod(in_shape)
    index = conv_input_index(layer, in_shape)
    valid = (index >= 0).to(weight.dtype)
    index = index.clamp_min(0)
    flat = weight.reshape(weight.shape[0], -1)
    kernel = flat.T @ flat
    gram = torch.zeros(n * n, dtype=weight.dtype)
    for rows, keep in zip(
        index.split(max(1, 2**22 // kernel.numel())),
        valid.split(max(1, 2**22 // kernel.numel())),
        strict=True,
    ):
        cells = rows[:, :, None] * n + rows[:, None, :]
        values = kernel * keep[:, :, None] * keep[:, None, :]
        gram.index_add_(0, cells.reshape(-1), values.reshape(-1))
    return gram.view(n, n)


def solve_layer_input(
    stage: Layer,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_grad: torch.Tensor,
    delta: torch.Tensor,
    pre_activation: torch.Tensor,
    weight_constraints: float = 1.0,
    balance: bool = True,
) -> torch.Tensor:
    """Least-squares input ``x`` of one layer from R-GAP's stacked system (eqs. 8-10).

    Minimizes ``||dL/dW - delta (x) x||^2 + w ||W x - (z - b)||^2`` through its normal
    equations. With ``balance``, ``w`` is multiplied by ``(rms(dL/dW) / rms(z - b))^2`` so that
    both blocks count at the scale of their right-hand sides.

    Args:
        stage: the layer; ``weight``, ``bias``, ``weight_grad`` its tensors in the solve dtype.
        delta: ``dL/dz`` of the layer's output, per-sample ``out_shape``.
        pre_activation: ``z``, the layer's output before the activation.
        weight_constraints: the weight ``w`` of the weight constraints.

    Returns:
        ``x`` of per-sample shape ``stage.in_shape``.
    """
    target = pre_activation
    if bias is not None:
        target = target - bias.view(-1, *([1] * (len(stage.out_shape) - 1)))
    if balance:
        ratio = weight_grad.pow(2).mean() / target.pow(2).mean().clamp_min(1e-300)
        weight_constraints = weight_constraints * float(ratio)
    if isinstance(stage.layer, nn.Linear):
        energy = delta.pow(2).sum()
        rhs = weight_grad.T @ delta + weight_constraints * weight.T @ target
        out_features, in_features = weight.shape
        if out_features < in_features and energy > 0:
            # (a I + w W^T W)^-1 r = (r - W^T (a/w I + W W^T)^-1 W r) / a  (Woodbury)
            small = weight @ weight.T
            small.diagonal().add_(energy / weight_constraints)
            inner = _solve_psd(small, weight @ rhs)
            return ((rhs - weight.T @ inner) / energy).reshape(stage.in_shape)
        normal = weight_constraints * weight.T @ weight
        normal.diagonal().add_(energy)
        return _solve_psd(normal, rhs).reshape(stage.in_shape)
    layer = stage.layer
    channels, height, width = stage.in_shape
    pixels = height * width
    normal = conv_gram(layer, stage.in_shape, weight).mul_(weight_constraints)
    d_t = conv_gradient_operator(layer, stage.in_shape, delta)
    blocks = normal.view(channels, pixels, channels, pixels).diagonal(dim1=0, dim2=2)
    blocks += (d_t @ d_t.T).unsqueeze(-1)  # the same D^T D on every channel's diagonal block
    grads = weight_grad.transpose(0, 1).reshape(channels, -1)  # (C_in, C_out k^2)
    rhs = (grads @ d_t.T).reshape(-1)
    rhs += weight_constraints * torch.nn.grad.conv2d_input(
        (1, *stage.in_shape),
        weight,
        target.unsqueeze(0),
        stride=layer.stride,
        padding=layer.padding,
    ).reshape(-1)
    return _solve_psd(normal, rhs).reshape(stage.in_shape)


def _solve_psd(normal: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve ``N x = r`` for a symmetric PSD ``N``: Cholesky, least squares if singular."""
    factor, info = torch.linalg.cholesky_ex(normal)
    if int(info) == 0:
        return torch.cholesky_solve(rhs.unsqueeze(1), factor).squeeze(1)
    return torch.linalg.lstsq(normal, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)


def _backprop_delta(stage: Layer, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``W^T delta``: dL/d(input) of ``stage`` in its per-sample input shape."""
    if isinstance(stage.layer, nn.Linear):
        return (weight.T @ delta).reshape(stage.in_shape)
    layer = stage.layer
    return torch.nn.grad.conv2d_input(
        (1, *stage.in_shape),
        weight,
        delta.reshape(1, *stage.out_shape),
        stride=layer.stride,
        padding=layer.padding,
    )[0]


# ---------------------------------------------------------------------- the recursion
def rgap_invert(
    observation: Observation,
    model: ImageClassifier,
    *,
    label: int | None = None,
    dtype: torch.dtype = torch.float64,
    weight_constraints: float = 1.0,
    balance: bool = True,
    on_layer: Callable[[str, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """R-GAP's recursion (Algorithm 1) for a batch of one.

    Returns:
        ``(image, label)``: the image (C, H, W) in [0, 1] pixel units (not clamped) and the
        label used at the output layer. ``on_layer(name, x)`` is called with every recovered
        layer input, output layer first.
    """
    if observation.known_batch_size not in (None, 1):
        raise GradleakError(
            f"R-GAP reconstructs a batch of one; the observation has batch size "
            f"{observation.known_batch_size}"
        )
    stages = feedforward_layers(model)

    def tensor(name: str) -> torch.Tensor:
        source = (
            observation.weights
            if name in observation.weights
            else dict(model.net.named_parameters())
        )
        return source[name].detach().to(dtype)

    def grad(name: str) -> torch.Tensor:
        return observation.gradients[name].detach().to(dtype)

    last = stages[-1]
    bias_name = f"{last.name}.bias"
    x, delta, label = output_layer_input(
        tensor(f"{last.name}.weight"),
        grad(f"{last.name}.weight"),
        grad(bias_name) if last.layer.bias is not None else None,
        label,
    )
    if on_layer is not None:
        on_layer(last.name, x)
    above = last
    for stage in reversed(stages[:-1]):
        output = x.reshape(stage.out_shape)
        z = _inverse(stage.activation, output)
        delta = _derivative(stage.activation, z, output) * _backprop_delta(
            above, tensor(f"{above.name}.weight"), delta
        ).reshape(stage.out_shape)
        bias = tensor(f"{stage.name}.bias") if stage.layer.bias is not None else None
        x = solve_layer_input(
            stage,
            tensor(f"{stage.name}.weight"),
            bias,
            grad(f"{stage.name}.weight"),
            delta,
            z,
            weight_constraints,
            balance,
        )
        if on_layer is not None:
            on_layer(stage.name, x)
        above = stage
    image = x.reshape(model.input_shape) * model.std[0].to(dtype) + model.mean[0].to(dtype)
    return image, label


@requirement("labels 'auto', 'known' or 'analytic'")
def LABEL_SETTING(context: AttackContext) -> str | None:
    labels = context.settings.labels
    if labels not in ("auto", "known", "analytic"):
        return f"R-GAP labels must be 'auto', 'known' or 'analytic', got {labels!r}"
    if labels == "known" and context.observation.labels is None:
        return "labels='known' but the threat model hides the labels"
    return None


@register_attack
class RGAP(Attack):
    """R-GAP: closed-form recursive inversion of a feed-forward network, batch size 1.

    Zhu and Blaschko, "R-GAP: Recursive Gradient Attack on Privacy", ICLR 2021,
    https://arxiv.org/abs/2010.07733 (Algorithm 1). Works on networks of conv and FC layers with
    invertible activations (leaky-ReLU, sigmoid, tanh) and no pooling or BatchNorm, e.g.
    ``rgap_cnn`` (their CNN6), ``lenet`` or ``mlp4``; raises GradleakError otherwise. Exact up to
    round-off where every layer's system has full rank (see
    :func:`gradleak.analysis.rank.layer_rank_analysis`).

    Arguments: see :class:`RGAPSettings`.

    Shape:
        observation of one image (C, H, W) -> images (1, C, H, W) clamped to [0, 1], labels (1,).

    Examples::
        >>> reconstruction = RGAP()(observe(build_model("rgap_cnn"), image, label))
        >>> reconstruction.images.shape  # (1, 3, 32, 32)
    """

    name = "rgap"
    defaults = RGAPSettings()
    requirements = (BATCH_SIZE_ONE, FEEDFORWARD, LABEL_SETTING)
    expected = "the image in closed form where every layer's system has full rank"

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        settings, observation = context.settings, context.observation
        if settings.dtype not in DTYPES:
            raise GradleakError(f"dtype must be one of {sorted(DTYPES)}, got {settings.dtype!r}")
        label = None
        if settings.labels in ("auto", "known") and observation.labels is not None:
            label = int(observation.labels[0])
        image, label = rgap_invert(
            observation,
            context.model,
            label=label,
            dtype=DTYPES[settings.dtype],
            weight_constraints=settings.weight_constraints,
            balance=settings.balance,
        )
        context.progress(1, 1)
        return Reconstruction(
            images=image.float().clamp(0, 1).unsqueeze(0),
            labels=torch.tensor([label], dtype=torch.long),
            attack=self.name,
            iterations=1,
        )
