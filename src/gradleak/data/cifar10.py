"""CIFAR-10 from the official *binary version* (no pickles), with an optional checked download.

Each ``*.bin`` file is a run of 3073-byte records: one label byte, then 3072 bytes of pixels
(1024 red, 1024 green, 1024 blue; rows top to bottom); the parsing shared with CIFAR-100 lives
in :mod:`gradleak.data.cifar_binary`. Krizhevsky, "Learning Multiple Layers of Features from
Tiny Images", 2009 - https://www.cs.toronto.edu/~kriz/cifar.html (please cite).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradleak.data.cifar_binary import CifarFormat, read_names
from gradleak.data.imageset import ImageSet
from gradleak.data.npz import imageset_from_arrays

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: Environment variable naming the folder that holds (or will hold) ``cifar-10-batches-bin/``.
ENV_VAR = "GRADLEAK_CIFAR10"
BATCH_DIR = "cifar-10-batches-bin"
SPLIT_FILES = {
    "test": ("test_batch.bin",),
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
}
#: The 20 first CIFAR-10 test images, lossless, in the shared data folder.
SHARED_FIRST20 = "cifar10/test_first20_lossless.npz"

FORMAT = CifarFormat(
    title="CIFAR-10",
    key="cifar10",
    label_fields=(("label", len(CIFAR10_CLASSES)),),
    env_var=ENV_VAR,
    folder=BATCH_DIR,
    archive="cifar-10-binary.tar.gz",
    split_files=SPLIT_FILES,
    loader="load_cifar10",
    shared_first20=SHARED_FIRST20,
)


def default_root() -> Path:
    """``$GRADLEAK_CIFAR10``, else ``~/.cache/gradleak/cifar10``."""
    return FORMAT.default_root()


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch into uint8 ``NHWC`` images and int64 labels.

    Raises:
        GradleakError: when the file is missing, empty, truncated or has labels outside 0..9.
    """
    images, labels = FORMAT.read_bin(path)
    return images, labels[:, 0]


def is_downloaded(root: str | os.PathLike | None = None, split: str = "test") -> bool:
    """Whether the binary batches for ``split`` are present under ``root``."""
    return FORMAT.is_downloaded(root, split)


def download_cifar10(root: str | os.PathLike | None = None) -> Path:
    """Download and extract the CIFAR-10 binary archive (about 160 MB) into ``root``."""
    return FORMAT.download(root, CIFAR10_URL, CIFAR10_MD5)


def load_cifar10(
    root: str | os.PathLike | None = None, split: str = "test", download: bool = False
) -> ImageSet:
    """Load a CIFAR-10 split (10,000 test or 50,000 train images, 32x32 RGB).

    Args:
        root: folder holding ``cifar-10-batches-bin/`` (or that folder itself); default
            ``$GRADLEAK_CIFAR10`` or ``~/.cache/gradleak/cifar10``.
        split: ``"test"`` or ``"train"``.
        download: fetch the official archive (md5-checked) when the batches are missing.

    Returns:
        An :class:`ImageSet` with ids ``cifar10-<split>-00000`` ... in file order.

    Examples::

        >>> test = load_cifar10(download=True)
        >>> batch = test.select(8, distinct_labels=True)
    """
    images, labels, batch_dir = FORMAT.read_split(
        root, split, download=download, url=CIFAR10_URL, md5=CIFAR10_MD5
    )
    return imageset_from_arrays(
        images,
        labels[:, 0],
        read_names(batch_dir / "batches.meta.txt", CIFAR10_CLASSES),
        source=f"cifar10:{split}",
        id_prefix=f"cifar10-{split}",
    )


def load_cifar10_default(split: str = "test") -> ImageSet:
    """CIFAR-10 for ``load_images("cifar10[:split]")``, without any download.

    Uses the binary batches under :func:`default_root` when present; otherwise, for the test
    split, the 20 first test images stored losslessly in the shared data folder
    (``cifar10/test_first20_lossless.npz``), identical to the official ones.
    """
    split = FORMAT.check_split(split)
    if FORMAT.use_downloaded(split):
        return load_cifar10(None, split)
    return FORMAT.shared_first20_set(split, CIFAR10_CLASSES)
