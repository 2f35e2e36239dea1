"""CIFAR-10 from the official *binary version* (no pickles), with an optional checked download.

Each ``*.bin`` file is a run of 3073-byte records: one label byte, then 3072 bytes of pixels
(1024 red, 1024 green, 1024 blue; rows top to bottom). Krizhevsky, "Learning Multiple Layers of
Features from Tiny Images", 2009 - https://www.cs.toronto.edu/~kriz/cifar.html (please cite).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradleak.data.download import download_file, safe_extract_tar
from gradleak.data.imageset import ImageSet
from gradleak.data.npz import imageset_from_arrays, read_npz_arrays
from gradleak.data.shared import shared_data_dir
from gradleak.errors import GradleakError

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

_RECORD = 1 + 32 * 32 * 3


def default_root() -> Path:
    """``$GRADLEAK_CIFAR10``, else ``~/.cache/gradleak/cifar10``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gradleak" / "cifar10"


def read_cifar10_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch into uint8 ``NHWC`` images and int64 labels.

    Raises:
        GradleakError: when the file is missing, empty, truncated or has labels outside 0..9.
    """
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"CIFAR-10 batch not found: {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise GradleakError(
            f"{path.name} is not a CIFAR-10 binary batch: {raw.size} bytes is not a positive "
            f"multiple of {_RECORD}"
        )
    records = raw.reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise GradleakError(f"{path.name}: label {labels.max()} outside 0..9 (corrupt file?)")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _batch_dir(root: Path) -> Path:
    # accept both <root>/cifar-10-batches-bin/ and the batches folder itself
    return root if (root / "test_batch.bin").is_file() else root / BATCH_DIR


def _class_names(batch_dir: Path) -> list[str]:
    meta = batch_dir / "batches.meta.txt"
    if meta.is_file():
        names = [line.strip() for line in meta.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(names) == len(CIFAR10_CLASSES):
            return names
    return list(CIFAR10_CLASSES)


def _check_split(split: str) -> str:
    if split not in SPLIT_FILES:
        raise GradleakError(f"unknown CIFAR-10 split {split!r}; use 'test' or 'train'")
    return split


def is_downloaded(root: str | os.PathLike | None = None, split: str = "test") -> bool:
    """Whether the binary batches for ``split`` are present under ``root``."""
    batch_dir = _batch_dir(Path(root) if root is not None else default_root())
    return all((batch_dir / f).is_file() for f in SPLIT_FILES[_check_split(split)])


def download_cifar10(root: str | os.PathLike | None = None) -> Path:
    """Download and extract the CIFAR-10 binary archive (about 160 MB) into ``root``."""
    root = Path(root) if root is not None else default_root()
    archive = download_file(CIFAR10_URL, root / "cifar-10-binary.tar.gz", CIFAR10_MD5)
    safe_extract_tar(archive, root)
    return root / BATCH_DIR


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
    split = _check_split(split)
    root = Path(root) if root is not None else default_root()
    if not is_downloaded(root, split):
        if not download:
            raise GradleakError(
                f"CIFAR-10 binary batches not found under {root}; download them with "
                f"gradleak.data.load_cifar10(root={str(root)!r}, download=True)"
            )
        download_cifar10(root)
    batch_dir = _batch_dir(root)
    parts = [read_cifar10_bin(batch_dir / f) for f in SPLIT_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return imageset_from_arrays(
        images,
        labels,
        _class_names(batch_dir),
        source=f"cifar10:{split}",
        id_prefix=f"cifar10-{split}",
    )


def load_cifar10_default(split: str = "test") -> ImageSet:
    """CIFAR-10 for ``load_images("cifar10[:split]")``, without any download.

    Uses the binary batches under :func:`default_root` when present; otherwise, for the test
    split, the 20 first test images stored losslessly in the shared data folder
    (``cifar10/test_first20_lossless.npz``), identical to the official ones.
    """
    split = _check_split(split)
    if is_downloaded(None, split) or os.environ.get(ENV_VAR):
        return load_cifar10(None, split)
    shared = shared_data_dir(required=False)
    if split == "test" and shared is not None and (shared / SHARED_FIRST20).is_file():
        path = shared / SHARED_FIRST20
        arrays = read_npz_arrays(path)
        return imageset_from_arrays(
            arrays["images"],
            arrays["labels"],
            list(CIFAR10_CLASSES),
            source=f"cifar10:test (first {len(arrays['labels'])}, {path})",
            id_prefix="cifar10-test",
        )
    raise GradleakError(
        f"CIFAR-10 ({split}) not found under {default_root()}; download it once with "
        "gradleak.data.load_cifar10(download=True)"
    )
