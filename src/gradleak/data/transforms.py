"""Pixel-level conversions between image files, uint8 arrays and [0, 1] tensors.

All loaders funnel through these helpers so that every image reaches an attack the same way:
uint8 ``HWC`` (or ``HW``) -> :func:`to_channels` -> :func:`center_crop_resize` -> stacked ``NHWC``
-> :func:`to_tensor` (float32 ``NCHW`` in [0, 1]). :func:`from_tensor` goes back for saving.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from gradleak.errors import GradleakError

# ITU-R 601-2 luma, the weights Pillow uses for ``convert("L")``.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_uint8(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise GradleakError(f"{what} must be uint8, got dtype {array.dtype}")
    return array


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert a uint8 image (``HW`` or ``HWC`` with C in 1, 3, 4) to ``HWC`` with ``channels``.

    RGB -> gray uses the ITU-R 601-2 luma weights (as Pillow's ``"L"`` mode); gray -> RGB repeats
    the channel; an alpha channel is dropped. Works on a stack too: any leading axes before
    ``HWC`` are kept, but a 3-D array is always read as one ``HWC`` image when its last axis is
    1, 3 or 4 and as ``HW`` otherwise.
    """
    image = _check_uint8(image, "image")
    if channels not in (1, 3):
        raise GradleakError(f"channels must be 1 or 3, got {channels}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        image = image[..., None]
    if image.ndim < 3 or image.shape[-1] not in (1, 3, 4):
        raise GradleakError(f"expected HW or HWC images, got shape {tuple(image.shape)}")
    if image.shape[-1] == 4:
        image = image[..., :3]
    have = image.shape[-1]
    if have == channels:
        return image
    if channels == 3:  # gray -> RGB
        return np.repeat(image, 3, axis=-1)
    gray = image.astype(np.float32) @ _LUMA  # RGB -> gray
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None]


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Crop the largest centered square from a uint8 ``HW``/``HWC`` image and resize it.

    Resizing uses Pillow's Lanczos filter (antialiased when shrinking), applied in floating
    point and rounded once, so that one image and a stack (:func:`prepare_images`) give the same
    pixels. The output keeps the input's layout (``HW`` stays ``HW``); an image that is already
    ``size`` x ``size`` is returned unchanged.
    """
    image = _check_uint8(image, "image")
    if image.ndim not in (2, 3):
        raise GradleakError(f"expected an HW or HWC image, got shape {tuple(image.shape)}")
    squeeze = image.ndim == 2
    out = _crop_resize_stack(image[None, ..., None] if squeeze else image[None], size)[0]
    return out[..., 0] if squeeze else out


@lru_cache(maxsize=64)
def _lanczos_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of Pillow's 1-D Lanczos resampling from n_in to n_out."""
    eye = np.eye(n_in, dtype=np.float32)  # row i: a one-hot at column i
    # Only the width changes, so Pillow runs its horizontal pass alone: row i of the result is
    # the response to a unit pixel at column i.
    response = Image.fromarray(eye).resize((n_out, n_in), Image.Resampling.LANCZOS)
    weights = np.asarray(response, dtype=np.float32).T.copy()
    weights.setflags(write=False)
    return weights


def _crop_resize_stack(images: np.ndarray, size: int, chunk: int = 1024) -> np.ndarray:
    """Center-crop and resize a uint8 ``NHWC`` stack of same-sized images."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise GradleakError(f"size must be a positive integer, got {size!r}")
    h, w = images.shape[1:3]
    if h == 0 or w == 0:
        raise GradleakError(f"image has no pixels (shape {tuple(images.shape[1:])})")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = images[:, top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(crop)
    wt = _lanczos_matrix(side, size).T  # (side, size)
    out = np.empty((len(images), size, size, images.shape[-1]), dtype=np.uint8)
    for start in range(0, len(images), chunk):
        x = crop[start : start + chunk].transpose(0, 3, 1, 2).astype(np.float32, order="C")
        n, c = x.shape[:2]
        # two 2-D matmuls (fast BLAS): resize the width, swap the axes, resize the height
        x = (x.reshape(-1, side) @ wt).reshape(n, c, side, size)
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2))
        x = (x.reshape(-1, side) @ wt).reshape(n, c, size, size)  # N, C, W, H
        out[start : start + chunk] = np.clip(np.rint(x), 0, 255).transpose(0, 3, 2, 1)
    return out


def prepare_images(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Bring a uint8 stack (``NHW`` or ``NHWC``) to ``N x size x size x channels``.

    Same result, image by image, as :func:`to_channels` then :func:`center_crop_resize`.
    """
    images = _check_uint8(images, "images")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise GradleakError(f"expected images as NHW or NHWC, got shape {tuple(images.shape)}")
    if channels == 3 and images.shape[-1] == 1:  # resize gray first, then repeat: same pixels
        return to_channels(_crop_resize_stack(images, size), channels)
    return _crop_resize_stack(to_channels(images, channels), size)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``NHWC`` (or ``NHW``, read as one channel) -> float32 ``NCHW`` tensor in [0, 1]."""
    images = _check_uint8(images, "images")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise GradleakError(f"expected images as NHWC, got shape {tuple(images.shape)}")
    pixels = images.transpose(0, 3, 1, 2).astype(np.float32, order="C")  # a writable copy
    return torch.from_numpy(pixels).div_(255.0)


def from_tensor(images: torch.Tensor) -> np.ndarray:
    """Float ``NCHW`` (or ``CHW``) tensor in [0, 1] -> uint8 ``NHWC`` (or ``HWC``) array.

    Values are clamped to [0, 1] and rounded to the nearest level, so ``from_tensor(to_tensor(x))``
    returns ``x`` exactly.
    """
    if not isinstance(images, torch.Tensor):
        raise GradleakError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise GradleakError(f"expected images as NCHW or CHW, got shape {tuple(images.shape)}")
    t = images.detach().to("cpu", torch.float32).clamp(0.0, 1.0).mul(255.0).round()
    t = t.to(torch.uint8)
    perm = (0, 2, 3, 1) if t.ndim == 4 else (1, 2, 0)
    return t.permute(*perm).contiguous().numpy()
