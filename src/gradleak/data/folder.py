"""Images from files: an image folder (one sub-folder per class), a flat folder, or a file list."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from gradleak.data.imageset import ImageSet
from gradleak.data.transforms import center_crop_resize, to_channels, to_tensor
from gradleak.errors import GradleakError

#: File name endings read as images; other files (notes, licences, ``.DS_Store``) are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

_ORDER_PREFIX = re.compile(r"^\d+_(?=.)")


def is_image_file(path: Path) -> bool:
    """True for a visible regular file whose extension is in :data:`IMAGE_EXTENSIONS`."""
    return (
        path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def class_name_from_folder(name: str) -> str:
    """Folder name -> class name, without a leading ``NN_`` ordering prefix (``00_Daffodil``)."""
    return _ORDER_PREFIX.sub("", name)


def read_image(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """Decode one image file to a uint8 ``size x size x channels`` array.

    The EXIF orientation is applied, the image converted to RGB, then to ``channels``,
    center-cropped to a square and resized.

    Raises:
        GradleakError: naming the file when it does not exist or does not decode.
    """
    path = Path(path)
    if not path.exists():
        raise GradleakError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        raise GradleakError(f"cannot decode image '{path.name}': {exc}") from exc
    image = center_crop_resize(to_channels(rgb, channels), size)
    return image.reshape(size, size, channels)


def _stack(files: Sequence[Path], size: int, channels: int) -> np.ndarray:
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = read_image(f, size, channels)
    return out


def load_image_files(
    paths: Sequence[str | os.PathLike], *, size: int = 32, channels: int = 3
) -> ImageSet:
    """Load the given image files, in the given order, all with label 0 (class ``"unknown"``)."""
    files = [Path(p) for p in paths]
    if not files:
        raise GradleakError("no image files given")
    for f in files:
        if not f.exists():
            raise GradleakError(f"path does not exist: {f}")
        if f.is_dir():
            raise GradleakError(f"expected an image file, got a folder: {f}")
    images = _stack(files, size, channels)
    return ImageSet(
        images=to_tensor(images),
        labels=torch.zeros(len(files), dtype=torch.int64),
        class_names=["unknown"],
        source=",".join(str(f) for f in files),
        ids=[str(f) for f in files],
    )


def load_image_folder(
    root: str | os.PathLike, *, size: int = 32, channels: int = 3, n: int | None = None
) -> ImageSet:
    """Load a folder of images.

    If ``root`` has sub-folders holding images, each such sub-folder is a class (classes sorted
    by folder name, files sorted by name; a leading ``NN_`` ordering prefix is dropped from the
    class name) and ids are the paths relative to ``root``. Otherwise the image files directly
    in ``root`` are loaded, sorted, with label 0 and class ``"unknown"``. Files with other
    extensions and hidden files are ignored. ``n`` keeps the first ``n`` images (only those are
    decoded).

    Raises:
        GradleakError: when ``root`` is missing or holds no images, or an image does not decode.
    """
    root = Path(root)
    if not root.exists():
        raise GradleakError(f"path does not exist: {root}")
    if not root.is_dir():
        raise GradleakError(f"not a folder: {root}")
    subdirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    classes = []
    for d in subdirs:
        files = sorted((f for f in d.iterdir() if is_image_file(f)), key=lambda f: f.name)
        if files:
            classes.append((d.name, files))

    if classes:
        names = [class_name_from_folder(folder) for folder, _ in classes]
        if len(set(names)) != len(names):  # prefixes were needed to tell classes apart
            names = [folder for folder, _ in classes]
        files = [f for _, fs in classes for f in fs]
        labels = np.concatenate(
            [np.full(len(fs), k, dtype=np.int64) for k, (_, fs) in enumerate(classes)]
        )
    else:
        files = sorted((f for f in root.iterdir() if is_image_file(f)), key=lambda f: f.name)
        if not files:
            raise GradleakError(f"no images found in folder {root}")
        names = ["unknown"]
        labels = np.zeros(len(files), dtype=np.int64)
    if n is not None:
        files, labels = files[:n], labels[:n]
    images = _stack(files, size, channels)
    return ImageSet(
        images=to_tensor(images),
        labels=torch.from_numpy(labels),
        class_names=names,
        source=str(root),
        ids=[f.relative_to(root).as_posix() for f in files],
    )
