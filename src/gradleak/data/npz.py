"""Image sets stored as ``.npz`` archives (never unpickled)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gradleak.data.imageset import ImageSet
from gradleak.data.transforms import to_tensor
from gradleak.errors import GradleakError


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and check an image ``.npz``: uint8 ``images`` (NHWC or NHW), integer ``labels``,
    optional string ``class_names``. Returns the arrays with ``labels`` as int64.

    Raises:
        GradleakError: when the file is missing, not an npz, needs pickle, or misses keys.
    """
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"path does not exist: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise GradleakError(f"cannot read npz {path.name}: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise GradleakError(f"{path.name} holds a single array, expected an npz archive")
    with data:
        missing = [k for k in ("images", "labels") if k not in data.files]
        if missing:
            raise GradleakError(
                f"npz {path.name} lacks key(s) {', '.join(missing)} (has: {', '.join(data.files)})"
            )
        try:
            arrays = {k: data[k] for k in data.files}
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise GradleakError(f"cannot read npz {path.name}: {exc}") from exc

    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8:
        raise GradleakError(f"npz {path.name}: images must be uint8, got {images.dtype}")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
        raise GradleakError(
            f"npz {path.name}: images must be NHWC or NHW, got shape {tuple(images.shape)}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
        raise GradleakError(
            f"npz {path.name}: labels must be {len(images)} integers, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    arrays["labels"] = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise GradleakError(f"npz {path.name}: negative label {labels.min()}")
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.dtype.kind not in "US" or names.ndim != 1:
            raise GradleakError(f"npz {path.name}: class_names must be a 1-D array of strings")
        if len(labels) and labels.max() >= len(names):
            raise GradleakError(
                f"npz {path.name}: label {labels.max()} but only {len(names)} class names"
            )
    return arrays


def imageset_from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None,
    *,
    source: str,
    id_prefix: str,
    offset: int = 0,
) -> ImageSet:
    """Wrap uint8 ``NHWC``/``NHW`` images and labels; ids are ``f"{id_prefix}-{i:05d}"``."""
    labels = np.asarray(labels, dtype=np.int64)
    if class_names is None:
        k = int(labels.max()) + 1 if len(labels) else 1
        class_names = [str(i) for i in range(k)]
    return ImageSet(
        images=to_tensor(images),
        labels=torch.from_numpy(labels.copy()),
        class_names=[str(c) for c in class_names],
        source=source,
        ids=[f"{id_prefix}-{offset + i:05d}" for i in range(len(labels))],
    )


def load_npz(path: str | os.PathLike, *, n: int | None = None) -> ImageSet:
    """Load an image ``.npz`` (see :func:`read_npz_arrays`) at its stored size.

    Class names default to ``"0"``, ``"1"``, ... when the archive has none; ids are
    ``<file stem>-00000``, ... ; ``n`` keeps the first ``n`` images.
    """
    path = Path(path)
    arrays = read_npz_arrays(path)
    images, labels = arrays["images"], arrays["labels"]
    if "class_names" in arrays:
        names = [str(c) for c in arrays["class_names"]]
    else:
        names = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
    if images.ndim == 4 and images.shape[-1] == 4:  # drop alpha
        images = images[..., :3]
    return imageset_from_arrays(
        images[:n],
        labels[:n],
        names,
        source=str(path),
        id_prefix=path.stem,
    )
