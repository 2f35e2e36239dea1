"""Image priors: penalties on candidate batches (R, B, C, H, W), one value per restart.

Unparameterized regularizers, the write-up's first prior family: total variation (Inverting
Gradients), and GradInversion's image-fidelity terms (Yin et al., CVPR 2021, eqs. 6-10): the
image l2 norm, BatchNorm statistics matching and group consistency across restarts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.errors import GradleakError


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (Rudin et al. 1992; Inverting Gradients' image prior).

    Mean absolute difference between vertically and horizontally adjacent pixels, averaged over
    the batch: natural images are mostly smooth. Input (R, B, C, H, W), output (R,). The attacks
    apply it to the model's normalized input, as Inverting Gradients does.
    """
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(2).mean(2)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(2).mean(2)
    return (dx + dy).mean(1)


def image_norm(normalized: torch.Tensor) -> torch.Tensor:
    """R_l2 (GradInversion eq. 7, from DeepInversion): the l2 norm of each normalized image
    (the model's input after mean/std normalization), averaged over the batch. (R, B, ...) -> (R,).
    """
    return normalized.flatten(2).norm(dim=2).mean(1)


def batchnorm_distance(
    statistics: Sequence[tuple[torch.Tensor, torch.Tensor]],
    running: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """R_BN (GradInversion eq. 8): sum over BatchNorm layers l of
    ``||mu_l(x) - running_mean_l||_2 + ||sigma^2_l(x) - running_var_l||_2``, where mu_l, sigma^2_l
    are the batch statistics of the candidates' features entering layer l, each (R, C). -> (R,)
    """
    if len(statistics) != len(running):
        raise GradleakError(
            f"{len(statistics)} BatchNorm layers were traced but the model holds {len(running)}"
        )
    return sum(
        (mean - ref_mean).norm(dim=1) + (var - ref_var).norm(dim=1)
        for (mean, var), (ref_mean, ref_var) in zip(statistics, running, strict=True)
    )


def registration_shifts(images: torch.Tensor, reference: torch.Tensor, max_shift: int):
    """Integer (dy, dx) per image that best aligns ``images`` (R, B, C, H, W) to ``reference``
    (B, C, H, W): the peak of their circular cross-correlation (by FFT), within ``max_shift``."""
    height, width = images.shape[-2:]
    a = torch.fft.rfft2(images.mean(2) - images.mean((2, 3, 4), keepdim=True)[:, :, 0])
    b = torch.fft.rfft2(reference.mean(1) - reference.mean((1, 2, 3), keepdim=True)[:, 0])
    correlation = torch.fft.irfft2(b.conj() * a, s=(height, width))  # (R, B, H, W)
    dy = torch.arange(height, device=images.device).view(-1, 1)
    dx = torch.arange(width, device=images.device).view(1, -1)
    dy, dx = (dy + height // 2) % height - height // 2, (dx + width // 2) % width - width // 2
    outside = (dy.abs() > max_shift) | (dx.abs() > max_shift)
    correlation = correlation.masked_fill(outside, -torch.inf)
    peak = correlation.flatten(2).argmax(2)
    return dy.expand(height, width).flatten()[peak], dx.expand(height, width).flatten()[peak]


def shift_images(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Circularly shift each image of ``images`` (R, B, C, H, W) back by its own (dy, dx) (R, B),
    so that ``shift_images(x, *registration_shifts(x, ref))`` lies on ``ref``."""
    height, width = images.shape[-2:]
    index = {"device": images.device}
    rows = (torch.arange(height, **index).view(1, 1, -1) + dy.unsqueeze(-1)) % height  # (R, B, H)
    cols = (torch.arange(width, **index).view(1, 1, -1) + dx.unsqueeze(-1)) % width  # (R, B, W)
    channels = images.shape[2]
    rows = rows[:, :, None, :, None].expand(-1, -1, channels, -1, width)
    shifted = images.gather(3, rows)
    cols = cols[:, :, None, None, :].expand(-1, -1, channels, height, -1)
    return shifted.gather(4, cols)


class GroupConsistency:
    """R_group (GradInversion eqs. 9-10): restarts from different seeds are pulled toward their
    registered consensus ``E(x)``, the pixel mean of all restarts after each was aligned to the
    current mean by an integer translation (a stand-in for the paper's RANSAC-flow registration).

    The consensus is refreshed by :meth:`register` (the optimization loop calls it every few
    steps) and held fixed in between; the penalty is the l2 norm of each restart's aligned images
    minus the consensus, averaged over the batch.
    """

    def __init__(self, max_shift: int = 4):
        self.max_shift = max_shift
        self.consensus: torch.Tensor | None = None
        self.shifts: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def register(self, images: torch.Tensor) -> None:
        mean = images.mean(0)
        self.shifts = registration_shifts(images, mean, self.max_shift)
        self.consensus = shift_images(images, *self.shifts).mean(0)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.consensus is None:
            return images.new_zeros(len(images))
        aligned = shift_images(images, *self.shifts)
        return (aligned - self.consensus).flatten(2).norm(dim=2).mean(1)
