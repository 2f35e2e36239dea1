"""How candidate images are represented while they are optimized."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.errors import GradleakError

INITS = ("randn", "rand", "gray")


class Pixels:
    """Free pixels, one tensor (R, B, C, H, W) for R restarts, optionally boxed to [0, 1].

    The variables are the model's normalized input ``z = (x - mean) / std`` (as in Inverting
    Gradients and breaching), so that a step size means the same on every model: a signed step of
    0.1 moves a pixel by ``0.1 * std``. Models without input normalization have ``z = x``.

    Args:
        shape: (R, B, C, H, W).
        init: ``"randn"`` (z ~ N(0, 1): DLG, Inverting Gradients), ``"rand"`` (x uniform in
            [0, 1]), ``"gray"`` (x = 0.5), or images in [0, 1], (B, C, H, W) for every restart
            or (R, B, C, H, W) (e.g. a learned inverter's output).
        boxed: clamp to the valid image range after every step (Inverting Gradients).
        generator: seeded random source.
        mean, std: the model's per-channel input normalization (default 0 and 1).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        init: str | torch.Tensor = "randn",
        boxed: bool = True,
        generator: torch.Generator | None = None,
        mean: Sequence[float] | torch.Tensor | None = None,
        std: Sequence[float] | torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ):
        channels = shape[-3]
        self.mean = _per_channel(mean, 0.0, channels)
        self.std = _per_channel(std, 1.0, channels)
        if isinstance(init, torch.Tensor):
            given = init.detach().float()
            if given.shape not in (tuple(shape), tuple(shape[1:])):
                raise GradleakError(
                    f"initial images have shape {list(given.shape)}, expected {list(shape[1:])} "
                    f"or {list(shape)}"
                )
            data = ((given.cpu().expand(shape) - self.mean) / self.std).clone()
        elif init == "randn":
            data = torch.randn(shape, generator=generator)
        elif init == "rand":
            data = (torch.rand(shape, generator=generator) - self.mean) / self.std
        elif init == "gray":
            data = ((torch.full(shape, 0.5)) - self.mean) / self.std
        else:
            raise GradleakError(f"unknown image init {init!r}; choose one of {INITS}")
        self.boxed = boxed
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.low, self.high = -self.mean / self.std, (1 - self.mean) / self.std
        data = data.to(device)
        self.data = torch.maximum(torch.minimum(data, self.high), self.low) if boxed else data
        self.data.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.data]

    def images(self) -> torch.Tensor:
        """The candidates in pixel space [0, 1] (when boxed), differentiable in the variables."""
        return self.data * self.std + self.mean

    @torch.no_grad()
    def project_(self) -> None:
        if self.boxed:
            torch.maximum(torch.minimum(self.data, self.high), self.low, out=self.data)


class CoarsePixels(Pixels):
    """Pixels on a coarser grid, bilinearly upsampled to the image size (a multi-resolution
    prior: a side-``resolution`` image has ``(resolution / H)^2`` of the unknowns, and natural
    images keep most of their energy there; coarse-to-fine solves start from the coarse one).

    Args:
        shape: (R, B, C, H, W) of the images; the variables are (R, B, C, r, r).
        resolution: side r of the variables' grid (at most H and W).
        init: ``"gray"`` or images in [0, 1] (downsampled by area averaging).
        mean, std: as for :class:`Pixels`; the box is kept on the coarse grid (bilinear
            interpolation stays inside it).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        resolution: int,
        *,
        init: str | torch.Tensor = "gray",
        mean=None,
        std=None,
    ):
        if not 1 <= resolution <= min(shape[-2:]):
            raise GradleakError(f"resolution must be in [1, {min(shape[-2:])}], got {resolution}")
        self.size = tuple(shape[-2:])
        coarse = (*shape[:-2], resolution, resolution)
        if isinstance(init, torch.Tensor):
            given = init.detach().float().expand(shape).flatten(0, 1)
            init = torch.nn.functional.adaptive_avg_pool2d(given, resolution).view(coarse)
        super().__init__(coarse, init=init, boxed=True, mean=mean, std=std)

    def images(self) -> torch.Tensor:
        flat = self.data.flatten(0, 1)
        fine = torch.nn.functional.interpolate(
            flat, size=self.size, mode="bilinear", align_corners=False
        )
        return fine.view(*self.data.shape[:-2], *self.size) * self.std + self.mean


def _per_channel(values, default: float, channels: int) -> torch.Tensor:
    if values is None:
        return torch.full((channels, 1, 1), default)
    values = torch.as_tensor(values, dtype=torch.float32).cpu().flatten()
    if values.numel() != channels:
        raise GradleakError(f"need {channels} normalization values, got {values.numel()}")
    return values.view(channels, 1, 1)
