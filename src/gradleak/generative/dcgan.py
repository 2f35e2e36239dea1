"""DCGAN generator and discriminator (Radford, Metz and Chintala, ICLR 2016), 32x32 or 64x64.

The generator is a sequence of blocks so that GIFD can start from an intermediate layer:

    z (latent_dim) -> block 0: 4x4 -> block 1: 8x8 -> ... -> last block: image (C, size, size)

``features_at(k, z)`` is the input of block ``k`` and ``forward_from(k, features)`` runs blocks
``k, k+1, ...``; ``forward_from(0, z) == forward(z)``. Images come out in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gradleak.devices import module_device
from gradleak.errors import GradleakError

SIZES = (32, 64)


def _upsamplings(size: int) -> int:
    if size not in SIZES:
        raise GradleakError(f"the DCGAN generator makes {SIZES} pixel images, not {size}")
    return int(math.log2(size // 4))


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise GradleakError(f"images have 1 or 3 channels, not {channels}")


class _ToPixels(nn.Module):
    """``(tanh(x) + 1) / 2``: DCGAN's tanh output mapped to [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x).add(1).mul(0.5)


class Generator(nn.Module):
    """DCGAN generator: transposed convolutions (4x4, stride 2) with BatchNorm and ReLU.

    Args:
        size: image side, 32 or 64.
        channels: 1 or 3.
        latent_dim: length of the latent code z ~ N(0, I).
        width: channels of the last hidden block (doubling towards the 4x4 block).

    Shape:
        z (N, latent_dim) -> images (N, channels, size, size) in [0, 1].
    """

    def __init__(self, size: int = 32, channels: int = 3, latent_dim: int = 64, width: int = 32):
        super().__init__()
        ups = _upsamplings(size)
        _check_channels(channels)
        if latent_dim < 1 or width < 1:
            raise GradleakError("latent_dim and width must be positive")
        self.config = {
            "size": size,
            "channels": channels,
            "latent_dim": latent_dim,
            "width": width,
        }
        hidden = [width * 2 ** (ups - 1 - i) for i in range(ups)]  # 4x4 ... size/2
        blocks = [
            nn.Sequential(
                nn.Unflatten(1, (latent_dim, 1, 1)),
                nn.ConvTranspose2d(latent_dim, hidden[0], 4, 1, 0, bias=False),
                nn.BatchNorm2d(hidden[0]),
                nn.ReLU(),
            )
        ]
        for c_in, c_out in zip(hidden[:-1], hidden[1:], strict=True):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                )
            )
        blocks.append(nn.Sequential(nn.ConvTranspose2d(hidden[-1], channels, 4, 2, 1), _ToPixels()))
        self.blocks = nn.ModuleList(blocks)
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @property
    def latent_dim(self) -> int:
        return self.config["latent_dim"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.config["channels"], self.config["size"], self.config["size"])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, z)

    def features_at(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """The input of block ``k`` for latents ``z`` (``k = 0``: z itself)."""
        self._check_block(k)
        for block in self.blocks[:k]:
            z = block(z)
        return z

    def forward_from(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Images from the input ``features`` of block ``k``."""
        self._check_block(k)
        for block in self.blocks[k:]:
            features = block(features)
        return features

    def _check_block(self, k: int) -> None:
        if not 0 <= k < len(self.blocks):
            raise GradleakError(f"the generator has blocks 0..{len(self.blocks) - 1}, not {k}")

    def sample(self, n: int, *, seed: int = 0) -> torch.Tensor:
        """``n`` images from seeded latents, in evaluation mode."""
        z = torch.randn(n, self.latent_dim, generator=torch.Generator().manual_seed(seed))
        z = z.to(module_device(self))  # seeded on the CPU: the same latents on every device
        was_training = self.training
        self.eval()
        with torch.no_grad():
            images = self(z)
        self.train(was_training)
        return images


class Discriminator(nn.Module):
    """DCGAN discriminator: strided 4x4 convolutions with BatchNorm and LeakyReLU(0.2).

    Shape:
        images (N, channels, size, size) in [0, 1] -> logits (N,) (real > 0).
    """

    def __init__(self, size: int = 32, channels: int = 3, width: int = 32):
        super().__init__()
        ups = _upsamplings(size)
        _check_channels(channels)
        hidden = [width * 2**i for i in range(ups)]  # size/2 ... 4x4
        layers: list[nn.Module] = [nn.Conv2d(channels, hidden[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(hidden[:-1], hidden[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.LeakyReLU(0.2),
            ]
        layers += [nn.Conv2d(hidden[-1], 1, 4, 1, 0), nn.Flatten(0)]
        self.net = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)
