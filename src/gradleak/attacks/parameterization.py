"""How candidate images are represented while they are optimized."""

from __future__ import annotations

import torch

from gradleak.errors import GradleakError

INITS = ("randn", "rand", "gray")


class Pixels:
    """Free pixels, one tensor (R, B, C, H, W) for R restarts, optionally boxed to [0, 1].

    Args:
        shape: (R, B, C, H, W).
        init: ``"randn"`` (DLG, Inverting Gradients), ``"rand"`` (uniform) or ``"gray"``.
        boxed: clamp to the valid image range after every step (Inverting Gradients).
        generator: seeded random source.
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        *,
        init: str = "randn",
        boxed: bool = True,
        generator: torch.Generator | None = None,
    ):
        if init == "randn":
            data = torch.randn(shape, generator=generator)
        elif init == "rand":
            data = torch.rand(shape, generator=generator)
        elif init == "gray":
            data = torch.full(shape, 0.5)
        else:
            raise GradleakError(f"unknown image init {init!r}; choose one of {INITS}")
        self.boxed = boxed
        self.data = data.clamp(0, 1) if boxed else data
        self.data.requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.data]

    def images(self) -> torch.Tensor:
        return self.data

    @torch.no_grad()
    def project_(self) -> None:
        if self.boxed:
            self.data.clamp_(0, 1)
