"""A handful of real color photos that ship inside scikit-image: images without any download.

scikit-image keeps these files in its own package folder (``skimage/data``); they are read
directly with Pillow, so nothing is fetched from the network. The photos and their licences are
described in scikit-image's ``skimage/data/README.txt``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from gradleak.data.folder import read_image
from gradleak.data.imageset import ImageSet
from gradleak.data.transforms import to_tensor
from gradleak.errors import GradleakError

#: (class name, file in scikit-image's data folder), in label order.
BUNDLED_PHOTOS = (
    ("astronaut", "astronaut.png"),  # Eileen Collins, NASA
    ("cat", "chelsea.png"),  # Chelsea the cat
    ("coffee", "coffee.png"),  # a cup of coffee
    ("rocket", "rocket.jpg"),  # SpaceX Falcon 9 on the launch pad
    ("motorcycle", "motorcycle_left.png"),  # Middlebury stereo photo of a motorbike
    ("galaxies", "hubble_deep_field.jpg"),  # Hubble eXtreme Deep Field
    ("retina", "retina.jpg"),  # fundus photograph of a human retina
    ("tissue", "ihc.png"),  # immunohistochemistry stained tissue
)

#: CIFAR-10 label of each bundled photo where CIFAR-10 has a matching class, else None.
BUNDLED_CIFAR10_LABELS: dict[str, int | None] = {
    "astronaut": None,
    "cat": 3,
    "coffee": None,
    "rocket": None,
    "motorcycle": None,  # CIFAR-10's "automobile" holds cars only
    "galaxies": None,
    "retina": None,
    "tissue": None,
}


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise GradleakError(
            "the bundled photos need scikit-image: pip install scikit-image"
        ) from exc
    return Path(skimage.data.__file__).resolve().parent


@lru_cache(maxsize=8)
def _bundled_array(size: int, channels: int) -> np.ndarray:
    folder = _skimage_data_dir()
    out = np.empty((len(BUNDLED_PHOTOS), size, size, channels), dtype=np.uint8)
    for i, (name, file) in enumerate(BUNDLED_PHOTOS):
        path = folder / file
        if not path.is_file():
            raise GradleakError(
                f"bundled photo {name!r} ({file}) is missing from scikit-image's data folder "
                f"{folder}; reinstall scikit-image"
            )
        out[i] = read_image(path, size, channels)
    out.setflags(write=False)
    return out


def bundled_photos(size: int = 32, channels: int = 3) -> ImageSet:
    """The bundled real photos, one per class, center-cropped and resized.

    Classes (labels 0..7): astronaut, cat, coffee, rocket, motorcycle, galaxies, retina, tissue.
    See :data:`BUNDLED_CIFAR10_LABELS` for the CIFAR-10 class where one fits.

    Returns:
        An :class:`ImageSet` of ``(8, channels, size, size)`` images with ids
        ``bundled/<file>``.

    Examples::

        >>> photos = bundled_photos(size=64)
        >>> photos.class_names[:2]
        ['astronaut', 'cat']
    """
    if not isinstance(size, int) or size < 1:
        raise GradleakError(f"size must be a positive integer, got {size!r}")
    if channels not in (1, 3):
        raise GradleakError(f"channels must be 1 or 3, got {channels!r}")
    images = _bundled_array(size, channels)
    return ImageSet(
        images=to_tensor(images),
        labels=torch.arange(len(BUNDLED_PHOTOS), dtype=torch.int64),
        class_names=[name for name, _ in BUNDLED_PHOTOS],
        source="bundled (scikit-image sample photos)",
        ids=[f"bundled/{file}" for _, file in BUNDLED_PHOTOS],
    )


@lru_cache(maxsize=4)
def _crops(n: int, size: int, channels: int, seed: int) -> torch.Tensor:
    from PIL import Image

    photos = _bundled_array(192, channels)
    draws = torch.rand(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i, (which, side, left, top) in enumerate(draws.numpy()):
        crop = int(24 + side * (192 - 24))
        x, y = int(left * (192 - crop)), int(top * (192 - crop))
        patch = photos[int(which * len(photos))][y : y + crop, x : x + crop]
        resized = Image.fromarray(patch.squeeze(-1) if channels == 1 else patch).resize(
            (size, size), Image.BILINEAR
        )
        out[i] = np.asarray(resized).reshape(size, size, channels)
    return to_tensor(out)


def bundled_crops(n: int, size: int = 32, channels: int = 3, *, seed: int = 0) -> torch.Tensor:
    """``n`` random square crops of the bundled photos (side 1/8 to all of the photo's
    192-pixel square, random place), resized to ``size``: (n, channels, size, size) in [0, 1].

    Natural-image statistics with no download, e.g. for a server calibrating its measurements
    (:mod:`gradleak.malicious.imprint`) or a client checking a model it received.
    """
    if not isinstance(n, int) or n < 1:
        raise GradleakError(f"n must be a positive integer, got {n!r}")
    if channels not in (1, 3):
        raise GradleakError(f"channels must be 1 or 3, got {channels!r}")
    return _crops(n, size, channels, seed).clone()
