"""Pictures people look at: truth-vs-reconstruction grids and GIFs of the optimization."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from gradleak.data import from_tensor


def image_grid(rows: Sequence[torch.Tensor], *, scale: int = 4, pad: int = 2) -> np.ndarray:
    """Tile rows of (B, C, H, W) images in [0, 1] into one uint8 RGB array, upscaled ``scale``x."""
    tiles = [from_tensor(row.detach().cpu().clamp(0, 1)) for row in rows]
    tiles = [t if t.ndim == 4 else t[..., None] for t in tiles]
    tiles = [np.repeat(t, 3, axis=-1) if t.shape[-1] == 1 else t for t in tiles]
    n, h, w = max(len(t) for t in tiles), tiles[0].shape[1], tiles[0].shape[2]
    h, w = h * scale, w * scale
    canvas = np.full((len(tiles) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, image in enumerate(row):
            big = image.repeat(scale, 0).repeat(scale, 1)
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            canvas[top : top + h, left : left + w] = big
    return canvas


def save_grid(path: str | Path, rows: Sequence[torch.Tensor], *, scale: int = 4) -> Path:
    """Write a PNG grid (e.g. rows = [truth, reconstruction])."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image_grid(rows, scale=scale))
    return path


def save_gif(
    path: str | Path,
    frames: Sequence[torch.Tensor],
    *,
    truth: torch.Tensor | None = None,
    scale: int = 4,
    seconds_per_frame: float = 0.1,
) -> Path:
    """Write an animated GIF of optimization frames (each (B, C, H, W)), truth as a top row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures = [
        image_grid([truth, frame] if truth is not None else [frame], scale=scale)
        for frame in frames
    ]
    if not pictures:
        raise ValueError("no frames to write")
    durations = [int(seconds_per_frame * 1000)] * (len(pictures) - 1) + [1500]
    if len(pictures) == 1:
        durations = durations[0]
    iio.imwrite(path, np.stack(pictures), extension=".gif", duration=durations, loop=0)
    return path
