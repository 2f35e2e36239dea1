"""Images from files: an image folder (one sub-folder per class), a flat folder, or a file list."""

from __future__ import annotations

import logging
import os
import re
import stat
import struct
import warnings
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
    """True for a visible entry that is not a folder and whose extension is in
    :data:`IMAGE_EXTENSIONS` (a FIFO or device with such a name is one too, and refused when
    read, rather than silently skipped; a broken link is skipped)."""
    return (
        not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS
        and path.exists()
        and not path.is_dir()
    )


def class_name_from_folder(name: str) -> str:
    """Folder name -> class name, without a leading ``NN_`` ordering prefix (``00_Daffodil``)."""
    return _ORDER_PREFIX.sub("", name)


def check_image_file(path: Path) -> None:
    """``path`` must be a regular, non-empty file: a folder, FIFO, socket or device is refused
    before it is opened (reading a FIFO would wait for a writer forever)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise GradleakError(f"image file not found: {path}") from None
    except OSError as err:
        raise GradleakError(f"cannot read image file {path}: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise GradleakError(f"expected an image file, got a folder: {path}")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
        raise GradleakError(f"image file {path} is {kind}, not an image")
    if info.st_size == 0:
        raise GradleakError(f"image file {path} is empty (0 bytes)")


def read_image(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """Decode one image file to a uint8 ``size x size x channels`` array.

    The EXIF orientation is applied, the image converted to RGB, then to ``channels``,
    center-cropped to a square and resized. Images of more than 8 bits per value (16-bit
    ``I;16`` PNGs and TIFFs, 32-bit integer ``I`` and float ``F``) are scaled by their range
    (:func:`high_depth_to_uint8`), not clipped. An image of more pixels than Pillow's
    ``Image.MAX_IMAGE_PIXELS`` is decoded with a note; one of more than twice as many (a
    possible decompression bomb) is refused.

    Raises:
        GradleakError: naming the file when it does not exist, is not a regular file, is empty,
            too large or does not decode.
    """
    path = Path(path)
    check_image_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Image.open(path) as im:
                _note_large(path, im.size)
                im = ImageOps.exif_transpose(im)
                if im.mode in HIGH_DEPTH_MODES:
                    pixels = high_depth_to_uint8(np.asarray(im), im.mode, path)
                else:
                    pixels = np.asarray(im.convert("RGB"))
        _note_warnings(path, caught)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise GradleakError(
            f"image {path} has {count}, more than the {2 * (Image.MAX_IMAGE_PIXELS or 0):,} "
            "Pillow decodes safely (a decompression bomb?); shrink it first"
        ) from None
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,  # a truncated header some of Pillow's plugins unpack
    ) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GradleakError(
            f"cannot decode image '{path.name}' in {path.parent}: {reason}"
        ) from None
    image = center_crop_resize(to_channels(pixels, channels), size)
    return image.reshape(size, size, channels)


#: Pillow modes of more than 8 bits per value (read as one gray channel).
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def high_depth_to_uint8(values: np.ndarray, mode: str, path: Path | str = "image") -> np.ndarray:
    """A gray image of more than 8 bits per value as uint8, scaled by its true range.

    ``I;16*`` (16-bit PNG, TIFF): ``v / 65535``. ``I`` (32-bit integers, as Pillow reads some
    16-bit files): ``v / 65535`` when every value lies in [0, 65535], else stretched from its
    minimum to its maximum. ``F`` (floats): kept when every value lies in [0, 1], else
    stretched likewise. Then rounded to 0..255.
    """
    x = np.asarray(values, dtype=np.float64)
    if not np.isfinite(x).all():
        raise GradleakError(f"image {path} holds NaN or infinite values")
    low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and low >= 0 and high <= 65535):
        x = x / 65535.0
    elif not (mode == "F" and low >= 0 and high <= 1):
        x = (x - low) / (high - low) if high > low else np.zeros_like(x)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _note_warnings(path: Path, caught: list) -> None:
    """Pillow's warnings while decoding (corrupt metadata it skipped, ...) as one plain note
    naming the file, instead of Python warning text; its large-image warning is
    :func:`_note_large`'s."""
    messages = [
        " ".join(str(w.message).split())
        for w in caught
        if not issubclass(w.category, Image.DecompressionBombWarning)
    ]
    if messages:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        logging.getLogger("gradleak").warning(f"image {path}: {messages[0]}{more}")


def _note_large(path: Path, size: tuple[int, int]) -> None:
    """One plain note for an image above Pillow's warning limit (Pillow's own warning, a
    Python warning, is silenced); above twice that limit Pillow refuses it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        logging.getLogger("gradleak").warning(
            f"image {path} is large ({size[0]}x{size[1]} pixels): decoding it takes time and memory"
        )


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
        check_image_file(f)
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
