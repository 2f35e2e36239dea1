"""The Cocktail Party Attack's unmixing by independent component analysis.

Kariyappa, Guo, Jha, Arlotta, Qian, Liu and Bhattacharya, "Cocktail Party Attack: Breaking
Aggregation-Based Privacy in Federated Learning using Independent Component Analysis", ICML 2023,
https://arxiv.org/abs/2209.05578.

The rows of a fully-connected layer's gradient are mixtures of the B inputs; their top-B right
singular vectors V are a whitened basis of the inputs' span. CPA looks for unit unmixing vectors
w_i such that the components y_i = V w_i (standardized over pixels) are as non-Gaussian as
possible, smooth and mutually independent, optimized with Adam:

    min_W  - mean_i (E[log cosh y_i] - E[log cosh nu])^2  +  tv * mean_i TV(y_i)
           + decorrelation * mean_{i != j} corr(y_i, y_j)^2,          nu ~ N(0, 1), |w_i| = 1.

Scale and sign, which ICA cannot tell, are fixed by the bias coordinate: every input row is
[x_i | 1], so c_i = w_i / (v_b . w_i). An optional box penalty keeps the scaled pixels in [0, 1]
(it hurt on CIFAR-10 batches, so it is off by default).
"""

from __future__ import annotations

import numpy as np
import torch


def _gaussian_logcosh() -> float:
    """E[log cosh(nu)] for nu ~ N(0, 1) (Gauss-Hermite quadrature)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(101)
    return float(np.sum(weights * np.log(np.cosh(nodes))) / np.sqrt(2 * np.pi))


LOGCOSH_GAUSS = _gaussian_logcosh()


def _tv(images: torch.Tensor) -> torch.Tensor:
    """Mean anisotropic total variation of (B, C, H, W) images, per image."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def cpa_unmix(
    basis: torch.Tensor,
    image_shape: tuple[int, int, int],
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    iterations: int = 500,
    lr: float = 0.01,
    tv: float = 0.05,
    decorrelation: float = 1.0,
    box: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unmixing coefficients C (B x B) with ``[x_i | 1] = C[i] @ basis.T``.

    Args:
        basis: (n + 1, B) orthonormal basis of the rows' span, bias coordinate last.
        image_shape: (C, H, W) of the network's input (n = C * H * W).
        mean, std: (1, C, 1, 1) input normalization of the model (x' = (x - mean) / std).
        iterations, lr: Adam steps and step size on the unmixing vectors.
        tv, decorrelation, box: weights of the total-variation prior, of the squared
            correlations between components, and of the box penalty (pixels in [0, 1] once the
            bias coordinate fixes scale and sign).
        generator: seeds the random orthogonal start.
    """
    pixels, bias_row = basis[:-1].float(), basis[-1].float()
    size = basis.shape[1]
    start = torch.linalg.qr(torch.randn(size, size, generator=generator))[0]
    unmixing = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([unmixing], lr=lr)
    off_diagonal = ~torch.eye(size, dtype=torch.bool)
    for _ in range(iterations):
        w = unmixing / unmixing.norm(dim=1, keepdim=True)
        y = w @ pixels.T  # B x n components
        y = (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True).clamp_min(1e-12)
        contrast = torch.log(torch.cosh(y)).mean(1)
        negentropy = (contrast - LOGCOSH_GAUSS).pow(2)
        correlation = (y @ y.T) / y.shape[1]
        loss = -negentropy.mean() + decorrelation * correlation[off_diagonal].pow(2).mean()
        if tv:
            loss = loss + tv * _tv(y.view(size, *image_shape)).mean()
        if box:
            images = _scaled_images(w, pixels, bias_row, image_shape, mean, std)
            excess = (images - images.clamp(0, 1)).pow(2).flatten(1).mean(1)
            loss = loss + box * excess.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        w = unmixing / unmixing.norm(dim=1, keepdim=True)
        return _bias_scaled(w.double(), basis[-1].double())


def _bias_scaled(w: torch.Tensor, bias_row: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` rescaled so that their bias coordinate is 1 (guarded away from 0)."""
    coordinate = w @ bias_row
    floor = 1e-3 * float(bias_row.norm())
    sign = torch.where(coordinate < 0, -1.0, 1.0).to(w.dtype)
    return w / (sign * coordinate.abs().clamp_min(floor))[:, None]


def _scaled_images(w, pixels, bias_row, image_shape, mean, std) -> torch.Tensor:
    coefficients = _bias_scaled(w, bias_row)
    images = (coefficients @ pixels.T).view(len(w), *image_shape)
    return images * std + mean
