"""Exact unmixing of a fully-connected layer's batched gradient (the self-consistency equation).

For a first layer ``z = W x + b`` and a mean loss over B samples, the observed gradient is

    G = [dL/dW | dL/db] = (1/B) sum_i delta(x_i) [x_i | 1]^T,     delta(x) = d loss(x, y) / dz,

so the rows ``[x_i | 1]`` span G's top-B right singular subspace V (the observation behind the
Cocktail Party Attack, Kariyappa et al. 2023). Writing ``[x_i | 1] = c_i^T V^T`` with unknown
coefficients C = [c_1 .. c_B]^T (B x B), projecting G onto V gives B * n equations in the B^2
unknowns:

    (1/B) sum_i delta(V_x c_i) c_i^T = G V,       v_b . c_i = 1  (bias coordinate),      (*)

with V_x the pixel rows of V and v_b its bias row; ``delta`` is computed exactly by the
attacker's copy of the network (the deeper layers' weights enter here). To first order in x, (*)
fixes only the mean image and the Gram matrix of the batch (the rest is an orthogonal mixing,
the ICA ambiguity); the network's curvature fixes the rest. :class:`FirstLayerEquation` gives
(*)'s residual and its Gauss-Newton normal equations in closed form from per-sample Jacobians,
and :func:`levenberg_marquardt` solves it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import grad, jacfwd, vmap


class FirstLayerEquation:
    """Residual of (*) and its normal equations, in float64.

    Args:
        rest: the network after the first linear layer (maps z to logits), per-sample.
        weight_in: ``W V_x`` (n x B): the layer's weight applied to the pixel part of the basis.
        bias: the layer's bias b (n,).
        target: ``G V`` (n x B).
        bias_row: ``v_b``, the bias coordinate of the basis (B,).
        labels: (B,) int64, one per row of C.
        bias_weight: weight of the residual ``v_b . c_i - 1``.
    """

    def __init__(
        self,
        rest: nn.Module,
        weight_in: torch.Tensor,
        bias: torch.Tensor,
        target: torch.Tensor,
        bias_row: torch.Tensor,
        labels: torch.Tensor,
        bias_weight: float = 1.0,
    ):
        self.weight_in, self.bias, self.bias_row = weight_in, bias, bias_row
        self.labels = labels
        self.batch = len(labels)
        self.scale = 1.0 / float(target.norm())
        self.target = target * self.scale
        self.bias_weight = bias_weight

        def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(rest(z[None]), y[None])

        dloss = grad(loss)

        def delta(c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return dloss(self.weight_in @ c + self.bias, y)

        self._delta = vmap(delta)
        self._jacobian = vmap(jacfwd(delta))

    def residuals(self, C: torch.Tensor, D: torch.Tensor | None = None):
        """(R (n x B), r_b (B,)): the scaled residual of (*) and of the bias coordinate."""
        if D is None:
            D = self._delta(C, self.labels)
        R = (D.T @ C) * (self.scale / self.batch) - self.target
        return R, (C @ self.bias_row - 1.0) * self.bias_weight

    def cost(self, C: torch.Tensor) -> torch.Tensor:
        R, rb = self.residuals(C)
        return R.pow(2).sum() + rb.pow(2).sum()

    def normal_equations(self, C: torch.Tensor):
        """``(J^T J, J^T r, cost)`` for the unknowns C flattened row-major (i, k).

        With d_i = delta(c_i) and K_i = d d_i / d c_i, the Jacobian of R_{nj} with respect to
        c_{ik} is (K_i[n, k] c_{ij} + d_i[n] [j = k]) / B, which gives J^T J from the Gram matrices
        of the K_i and d_i without forming J (B^2 x B^2 instead of nB x B^2).
        """
        B = self.batch
        D = self._delta(C, self.labels)  # B x n
        with warnings.catch_warnings():
            # torch's forward-mode AD scripts its decompositions on first use.
            warnings.filterwarnings("ignore", ".*torch.jit.script", DeprecationWarning)
            K = self._jacobian(C, self.labels)  # B x n x B
        R, rb = self.residuals(C, D)
        s = self.scale / B
        gradient = s * (torch.einsum("ink,ni->ik", K, R @ C.T) + D @ R) + self.bias_weight * (
            rb[:, None] * self.bias_row[None, :]
        )
        flat = K.permute(0, 2, 1).reshape(B * B, -1)  # (i, k) x n
        H = (flat @ flat.T).view(B, B, B, B)  # i, k, m, l
        H *= (C @ C.T)[:, None, :, None]
        KD = torch.einsum("ink,mn->ikm", K, D)  # K_i^T d_m
        H += KD[:, :, :, None] * C[:, None, None, :]  # (K_i^T d_m)_k c_{il}
        H += KD.permute(2, 0, 1)[:, None, :, :] * C.T[None, :, :, None]  # (K_m^T d_i)_l c_{mk}
        eye = torch.eye(B, dtype=C.dtype)
        H += (D @ D.T)[:, None, :, None] * eye[None, :, None, :]
        H *= s * s
        H += (
            self.bias_weight**2
            * eye[:, None, :, None]
            * torch.outer(self.bias_row, self.bias_row)[None, :, None, :]
        )
        cost = R.pow(2).sum() + rb.pow(2).sum()
        return H.reshape(B * B, B * B), gradient.reshape(-1), cost


def layer_row_space(
    gradients: dict[str, torch.Tensor], name: str, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``G = [dL/dW | dL/db]`` of linear layer ``name`` in float64, all its singular values
    (descending) and its top-``batch_size`` right singular vectors V (bias coordinate last)."""
    weight = gradients[f"{name}.weight"].double()
    bias = gradients[f"{name}.bias"].double()
    gradient = torch.cat([weight, bias[:, None]], dim=1)
    _, singular_values, vh = torch.linalg.svd(gradient, full_matrices=False)
    return gradient, singular_values, vh[:batch_size].T


def subspace_equation(
    rest: nn.Module,
    layer: nn.Linear,
    gradient: torch.Tensor,
    basis: torch.Tensor,
    labels: torch.Tensor,
    bias_weight: float = 1.0,
) -> FirstLayerEquation:
    """(*) for ``layer`` (weights from the attacker's copy) restricted to ``basis`` (V)."""
    return FirstLayerEquation(
        rest,
        weight_in=layer.weight.detach().double() @ basis[:-1],
        bias=layer.bias.detach().double(),
        target=gradient @ basis,
        bias_row=basis[-1],
        labels=labels,
        bias_weight=bias_weight,
    )


def levenberg_marquardt(
    equation: FirstLayerEquation,
    start: torch.Tensor,
    iterations: int,
    *,
    damping: float = 1e-3,
    on_step: Callable[[int, torch.Tensor, float], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Solve (*) from ``start`` (B x B) with Marquardt-scaled Levenberg-Marquardt.

    Stops after ``iterations`` steps, when no damping gives a decrease, or when three steps in a
    row lower the cost by less than 1e-4 of itself (the float32 noise floor of the observation).
    Returns the solution and the root cost (relative residual of (*)) after every step.
    """
    C = start.clone()
    B = len(C)
    cost = float(equation.cost(C))
    history: list[float] = []
    lam, slow = damping, 0
    for it in range(iterations):
        H, g, _ = equation.normal_equations(C)
        scaling = H.diagonal().clamp_min(1e-30)
        improved = False
        while lam < 1e10:
            L, info = torch.linalg.cholesky_ex(H + lam * torch.diag(scaling))
            if int(info) == 0:
                step = -torch.cholesky_solve(g[:, None], L)[:, 0].view(B, B)
                trial = float(equation.cost(C + step))
                if trial < cost:
                    slow = slow + 1 if cost - trial < 1e-4 * cost else 0
                    C, cost, improved = C + step, trial, True
                    lam = max(lam / 3, 1e-12)
                    break
            lam *= 4
        history.append(cost**0.5)
        if on_step is not None:
            on_step(it, C, cost**0.5)
        if not improved or slow >= 3:
            break
    return C, history
