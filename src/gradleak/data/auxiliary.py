"""The attacker's auxiliary data: images to train priors and inverters on, never the private ones.

Generative priors and learned inverters learn from data the attacker owns. Their evaluations are
only honest when that data does not contain the images attacked later, so
:func:`auxiliary_images` removes near-duplicates of the private images (a pixel-space match,
robust to the JPEG copies in the shared folder) and :func:`check_disjoint` refuses a training set
that still holds one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradleak.data.cifar10 import is_downloaded
from gradleak.data.imageset import ImageSet
from gradleak.data.load import conform, load_images
from gradleak.data.npz import load_npz
from gradleak.data.shared import shared_data_dir
from gradleak.errors import GradleakError

SHARED_CIFAR10_JPEG = "cifar10/test_jpeg_q75.npz"
#: PSNR (dB) above which an auxiliary image counts as a copy of a private one. The shared JPEG
#: copies of CIFAR-10 are 27-32 dB from their originals; distinct natural images stay below ~20.
DUPLICATE_PSNR = 24.0


def auxiliary_images(
    spec: str,
    *,
    size: int = 32,
    channels: int = 3,
    classes: Sequence[int] | None = None,
    exclude: ImageSet | torch.Tensor | None = None,
    n: int | None = None,
) -> ImageSet:
    """Load an auxiliary image set, optionally restricted to ``classes``, minus ``exclude``.

    Args:
        spec: anything :func:`~gradleak.data.load_images` takes, or ``"cifar10:aux"``: the
            CIFAR-10 training split when downloaded, else the shared folder's 10,000 JPEG copies
            of the test split (the private images are removed by ``exclude``).
        classes: keep only these labels.
        exclude: private images (an ImageSet or (N, C, H, W) tensor) that must not be trained on;
            every auxiliary image within :data:`DUPLICATE_PSNR` of one of them is dropped.
        n: keep at most the first ``n`` remaining images.
    """
    if spec.strip().lower() == "cifar10:aux":
        data = _cifar10_auxiliary(size, channels)
    else:
        data = load_images(spec, size=size, channels=channels)
    if classes is not None:
        wanted = torch.tensor(sorted({int(c) for c in classes}))
        data = data.subset(torch.isin(data.labels, wanted))
        if len(data) == 0:
            raise GradleakError(f"auxiliary data {spec!r} has no image of classes {list(classes)}")
    if exclude is not None:
        duplicates = near_duplicates(data.images, _pixels(exclude))
        data = data.subset(~duplicates)
    if n is not None:
        data = data.subset(slice(0, n))
    if len(data) == 0:
        raise GradleakError(f"no auxiliary image left in {spec!r}")
    return data


def near_duplicates(
    candidates: torch.Tensor, private: torch.Tensor, threshold_db: float = DUPLICATE_PSNR
) -> torch.Tensor:
    """Mask (N,) of ``candidates`` within ``threshold_db`` PSNR of any ``private`` image."""
    if private.numel() == 0:
        return torch.zeros(len(candidates), dtype=torch.bool)
    if candidates.shape[1:] != private.shape[1:]:
        raise GradleakError(
            f"auxiliary images {list(candidates.shape[1:])} and private images "
            f"{list(private.shape[1:])} differ in shape"
        )
    mask = torch.zeros(len(candidates), dtype=torch.bool)
    flat_private = private.flatten(1)
    max_mse = 10 ** (-threshold_db / 10)
    for start in range(0, len(candidates), 2048):
        chunk = candidates[start : start + 2048].flatten(1)
        mse = torch.cdist(chunk, flat_private).pow(2) / flat_private.shape[1]
        mask[start : start + len(chunk)] = (mse <= max_mse).any(1)
    return mask


def check_disjoint(auxiliary: torch.Tensor, private: ImageSet | torch.Tensor) -> None:
    """Raise when a private image (or a near copy of it) is in the auxiliary training data."""
    found = int(near_duplicates(auxiliary, _pixels(private)).sum())
    if found:
        raise GradleakError(
            f"{found} auxiliary image(s) are copies of private images (PSNR >= {DUPLICATE_PSNR} "
            "dB): never train the attacker's networks on the images it attacks"
        )


def _pixels(images: ImageSet | torch.Tensor) -> torch.Tensor:
    return images.images if isinstance(images, ImageSet) else images


def _cifar10_auxiliary(size: int, channels: int) -> ImageSet:
    if is_downloaded(None, "train"):
        return load_images("cifar10:train", size=size, channels=channels)
    shared = shared_data_dir(required=False)
    if shared is not None and (shared / SHARED_CIFAR10_JPEG).is_file():
        data = load_npz(shared / SHARED_CIFAR10_JPEG)
        return conform(data, size, channels)
    raise GradleakError(
        "no auxiliary CIFAR-10 images: download the training split once with "
        "`python -c 'from gradleak.data import load_cifar10; load_cifar10(download=True)'`"
    )
