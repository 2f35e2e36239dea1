"""MNIST from the original IDX files (plain or gzipped), with an optional checked download.

LeCun, Cortes and Burges, "The MNIST database of handwritten digits",
http://yann.lecun.com/exdb/mnist/ (please cite). Downloads use a public mirror of the originals.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from gradleak.data.download import download_file
from gradleak.data.imageset import ImageSet
from gradleak.data.npz import imageset_from_arrays
from gradleak.data.shared import shared_data_dir
from gradleak.errors import GradleakError

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
#: md5 of the gzipped originals, as served by the mirror.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SPLIT_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}
MNIST_CLASSES = tuple(str(d) for d in range(10))
#: Environment variable naming a folder with the IDX files.
ENV_VAR = "GRADLEAK_MNIST"
IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` or plain) and check its magic number and size.

    Raises:
        GradleakError: when the file is missing, not gzip when named ``.gz``, has another magic
            number, or its length does not match its header.
    """
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"IDX file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise GradleakError(f"cannot read {path.name}: {exc}") from exc
    if len(raw) < 4:
        raise GradleakError(f"{path.name} is not an IDX file: only {len(raw)} bytes")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise GradleakError(f"{path.name}: bad IDX magic number {found}, expected {magic}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise GradleakError(f"{path.name}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise GradleakError(
            f"{path.name}: {len(raw)} bytes but its header {shape} implies {expected} (corrupt?)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _has_split(folder: Path | None, split: str) -> bool:
    return folder is not None and all(_find(folder, n) for n in SPLIT_FILES[split])


def default_root(split: str = "test") -> Path:
    """``$GRADLEAK_MNIST``; else ``~/.cache/gradleak/mnist`` if it holds ``split``; else
    ``<shared data>/mnist`` if that holds it; else ``~/.cache/gradleak/mnist``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = Path.home() / ".cache" / "gradleak" / "mnist"
    if _has_split(cache, split):
        return cache
    shared = shared_data_dir(required=False)
    if shared is not None and _has_split(shared / "mnist", split):
        return shared / "mnist"
    return cache


def download_mnist(root: str | os.PathLike | None = None, split: str = "test") -> Path:
    """Download the two gzipped IDX files of ``split`` (md5-checked) into ``root``."""
    split = _check_split(split)
    root = Path(root) if root is not None else Path.home() / ".cache" / "gradleak" / "mnist"
    for name in SPLIT_FILES[split]:
        gz = f"{name}.gz"
        download_file(MNIST_MIRROR + gz, root / gz, MNIST_MD5[gz])
    return root


def _check_split(split: str) -> str:
    if split not in SPLIT_FILES:
        raise GradleakError(f"unknown MNIST split {split!r}; use 'test' or 'train'")
    return split


def load_mnist(
    root: str | os.PathLike | None = None, split: str = "test", download: bool = False
) -> ImageSet:
    """Load an MNIST split (10,000 test or 60,000 train digits, 28x28 gray, one channel).

    Args:
        root: folder with the IDX files (``t10k-images-idx3-ubyte[.gz]`` ...); default
            :func:`default_root`.
        split: ``"test"`` or ``"train"``.
        download: fetch the gzipped files from the mirror (md5-checked) when missing.

    Returns:
        An :class:`ImageSet` of ``(N, 1, 28, 28)`` images, classes ``"0"`` ... ``"9"``, ids
        ``mnist-<split>-00000`` ...

    Examples::

        >>> digits = load_mnist()
        >>> batch = digits.select(10, distinct_labels=True)
    """
    split = _check_split(split)
    root = Path(root) if root is not None else default_root(split)
    if not _has_split(root, split):
        if not download:
            raise GradleakError(
                f"MNIST ({split}) IDX files not found under {root}; download them with "
                f"gradleak.data.load_mnist(split={split!r}, download=True)"
            )
        download_mnist(root, split)
    image_file, label_file = (_find(root, n) for n in SPLIT_FILES[split])
    images = read_idx(image_file, IMAGES_MAGIC)
    labels = read_idx(label_file, LABELS_MAGIC)
    if len(images) != len(labels):
        raise GradleakError(
            f"MNIST {split}: {len(images)} images but {len(labels)} labels in {root}"
        )
    if len(labels) and labels.max() > 9:
        raise GradleakError(f"MNIST {split}: label {labels.max()} outside 0..9 in {label_file}")
    return imageset_from_arrays(
        images,
        labels.astype(np.int64),
        list(MNIST_CLASSES),
        source=f"mnist:{split}",
        id_prefix=f"mnist-{split}",
    )
