"""One entry point, :func:`load_images`, from a short spec string to an :class:`ImageSet`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gradleak.data.bundled import bundled_photos
from gradleak.data.cifar10 import load_cifar10_default
from gradleak.data.cifar100 import load_cifar100_default
from gradleak.data.folder import load_image_files, load_image_folder
from gradleak.data.imageset import ImageSet
from gradleak.data.mnist import load_mnist
from gradleak.data.npz import imageset_from_arrays, load_npz, read_npz_arrays
from gradleak.data.shared import shared_file
from gradleak.data.transforms import from_tensor, prepare_images, to_tensor
from gradleak.errors import GradleakError
from gradleak.limits import SIZE_LIMITS

FLOWERS17_NPZ = "flowers17/flowers17_64x64.npz"


def load_flowers17() -> ImageSet:
    """Oxford Flowers-17 (1,360 photos, 80 per class, 64x64) from the shared data folder.

    Nilsback and Zisserman, "A Visual Vocabulary for Flower Classification", CVPR 2006.
    """
    path = shared_file(FLOWERS17_NPZ)
    arrays = read_npz_arrays(path)
    names = arrays.get("class_names")
    return imageset_from_arrays(
        arrays["images"],
        arrays["labels"],
        None if names is None else [str(c) for c in names],
        source="flowers17",
        id_prefix="flowers17",
    )


#: Dataset names accepted by :func:`load_images`, each loading at native size.
DATASETS: dict[str, Callable[[], ImageSet]] = {
    "cifar10": lambda: load_cifar10_default("test"),
    "cifar10:test": lambda: load_cifar10_default("test"),
    "cifar10:train": lambda: load_cifar10_default("train"),
    "cifar100": lambda: load_cifar100_default("test"),
    "cifar100:test": lambda: load_cifar100_default("test"),
    "cifar100:train": lambda: load_cifar100_default("train"),
    "mnist": lambda: load_mnist(split="test"),
    "mnist:test": lambda: load_mnist(split="test"),
    "mnist:train": lambda: load_mnist(split="train"),
    "flowers17": load_flowers17,
}


def conform(images: ImageSet, size: int, channels: int) -> ImageSet:
    """The same set with every image converted to ``channels`` and ``size`` x ``size``."""
    if tuple(images.images.shape[1:]) == (channels, size, size):
        return images
    pixels = prepare_images(from_tensor(images.images), size, channels)
    return ImageSet(
        images=to_tensor(pixels),
        labels=images.labels,
        class_names=images.class_names,
        source=images.source,
        ids=images.ids,
    )


#: The largest image side loaded (the largest ``image_size`` a model is built with).
MAX_SIZE = SIZE_LIMITS["image_size"]


def _check_args(size: int, channels: int, n: int | None) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise GradleakError(f"size must be a positive integer, got {size!r}")
    if size > MAX_SIZE:
        raise GradleakError(f"image size must be at most {MAX_SIZE}, got {size}")
    if channels not in (1, 3):
        raise GradleakError(f"channels must be 1 or 3, got {channels!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise GradleakError(f"n must be a positive integer or None, got {n!r}")


def load_images(
    spec: str | os.PathLike | None,
    *,
    size: int = 32,
    channels: int = 3,
    n: int | None = None,
) -> ImageSet:
    """Load real images from a dataset name, a file or a folder.

    Args:
        spec: one of

            - ``None`` or ``"bundled"``: the photos shipped with scikit-image
              (:func:`~gradleak.data.bundled_photos`);
            - ``"cifar10"``, ``"cifar10:test"``, ``"cifar10:train"``: CIFAR-10 from
              ``$GRADLEAK_CIFAR10`` or ``~/.cache/gradleak/cifar10`` once downloaded
              (``load_cifar10(download=True)``); without it, the test split falls back to the 20
              first test images stored losslessly in the shared data folder;
            - ``"cifar100"``, ``"cifar100:test"``, ``"cifar100:train"``: CIFAR-100 (fine labels,
              100 classes) the same way, from ``$GRADLEAK_CIFAR100`` or
              ``~/.cache/gradleak/cifar100`` (``load_cifar100(download=True)``);
            - ``"mnist"``, ``"mnist:test"``, ``"mnist:train"``: MNIST IDX files
              (:func:`~gradleak.data.load_mnist`);
            - ``"flowers17"``: the shared Flowers-17 archive (1,360 photos at 64x64);
            - a ``.npz`` file with uint8 ``images`` (NHWC or NHW) and ``labels``;
            - a folder: one sub-folder per class (a leading ``NN_`` is dropped from class names),
              or image files directly in it (label 0, class ``"unknown"``);
            - an image file, or several separated by commas.

            Dataset names are matched before paths; write ``./mnist`` for a folder of that name.
        size: side of the square output; images are center-cropped, then resized (Lanczos).
        channels: 1 (luma) or 3 (RGB; gray images are repeated).
        n: keep only the first ``n`` images in sorted order.

    Returns:
        An :class:`ImageSet` with ``(N, channels, size, size)`` float32 images in [0, 1].

    Raises:
        GradleakError: for an unknown name, a missing path, an empty folder, a file that does
            not decode or an archive without the expected keys.

    Examples::

        >>> batch = load_images("bundled", size=32, n=4)
        >>> digits = load_images("mnist", size=28, channels=1).select(8, distinct_labels=True)
    """
    _check_args(size, channels, n)
    if spec is None:
        spec = "bundled"
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "bundled":
            photos = bundled_photos(size=size, channels=channels)
            return photos if n is None else photos.subset(slice(0, n))
        if key in DATASETS:
            data = DATASETS[key]()
            return conform(data if n is None else data.subset(slice(0, n)), size, channels)
        if "," in spec and not Path(spec).expanduser().exists():
            files = [Path(part.strip()).expanduser() for part in spec.split(",") if part.strip()]
            images = load_image_files(files, size=size, channels=channels)
            return images if n is None else images.subset(slice(0, n))

    path = Path(spec).expanduser()
    if not path.exists():
        text = str(spec)
        if isinstance(spec, str) and "/" not in text and os.sep not in text and "." not in text:
            known = ", ".join(["bundled", *DATASETS])
            raise GradleakError(
                f"{text!r} is neither a known dataset ({known}) nor an existing path"
            )
        raise GradleakError(f"path does not exist: {path}")
    if path.is_dir():
        return load_image_folder(path, size=size, channels=channels, n=n)
    if path.suffix.lower() == ".npz":
        return conform(load_npz(path, n=n), size, channels)
    return load_image_files([path], size=size, channels=channels)
