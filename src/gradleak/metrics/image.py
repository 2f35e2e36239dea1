"""Image quality between reconstructions and ground truth, per image, on [0, 1] images."""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity


def mse(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image; inputs (B, C, H, W), output (B,)."""
    _check_pair(reconstruction, truth)
    diff = reconstruction.detach().double() - truth.detach().double()
    return diff.pow(2).flatten(1).mean(1)


def psnr(reconstruction: torch.Tensor, truth: torch.Tensor, max_db: float = 200.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (data range 1), capped at ``max_db``."""
    error = mse(reconstruction, truth)
    return (10 * torch.log10(1.0 / error.clamp_min(10 ** (-max_db / 10)))).float()


def gray_psnr(truth: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of a flat 0.5 gray image against ``truth`` (B, C, H, W): the score of a
    reconstruction that reads nothing from the gradient (the no-information baseline)."""
    return psnr(torch.full_like(truth, 0.5), truth)


def ssim(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window sigma 1.5, data range 1) per image.

    Images smaller than the 11-pixel window use the largest odd window that fits.
    """
    _check_pair(reconstruction, truth)
    rec = reconstruction.detach().clamp(0, 1).permute(0, 2, 3, 1).double().cpu().numpy()
    ref = truth.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    side = min(rec.shape[1], rec.shape[2])
    win = min(11, side if side % 2 else side - 1)
    values = [
        structural_similarity(
            a,
            b,
            data_range=1.0,
            channel_axis=2,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            win_size=win,
        )
        for a, b in zip(rec, ref, strict=True)
    ]
    return torch.tensor(np.asarray(values), dtype=torch.float32)


def _check_pair(reconstruction: torch.Tensor, truth: torch.Tensor) -> None:
    if reconstruction.shape != truth.shape:
        raise ValueError(
            f"reconstruction shape {list(reconstruction.shape)} differs from truth shape "
            f"{list(truth.shape)}"
        )
