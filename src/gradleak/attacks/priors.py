"""Image priors: penalties on candidate batches (R, B, C, H, W), one value per restart."""

from __future__ import annotations

import torch


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (Rudin et al. 1992; Inverting Gradients' image prior).

    Mean absolute difference between vertically and horizontally adjacent pixels, averaged over
    the batch: natural images are mostly smooth. Input (R, B, C, H, W), output (R,).
    """
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(2).mean(2)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(2).mean(2)
    return (dx + dy).mean(1)
