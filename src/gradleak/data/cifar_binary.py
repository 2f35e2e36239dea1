"""What CIFAR-10 and CIFAR-100 share: the official *binary version* and how it is found.

Each ``*.bin`` file is a run of records: the label bytes (one for CIFAR-10; coarse then fine for
CIFAR-100), then 3072 bytes of pixels (1024 red, 1024 green, 1024 blue; rows top to bottom).
Nothing is ever unpickled. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images",
2009 - https://www.cs.toronto.edu/~kriz/cifar.html (please cite).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradleak.data.download import download_file, safe_extract_tar
from gradleak.data.imageset import ImageSet
from gradleak.data.npz import imageset_from_arrays, read_npz_arrays
from gradleak.data.shared import shared_data_dir
from gradleak.errors import GradleakError

PIXELS = 32 * 32 * 3


@dataclass(frozen=True)
class CifarFormat:
    """One binary CIFAR distribution: record layout, file names and where it is looked for.

    Args:
        title: name in messages, e.g. ``"CIFAR-10"``.
        key: dataset name and id prefix, e.g. ``"cifar10"``.
        label_fields: ``(name, number of classes)`` of each label byte, in record order.
        env_var: environment variable naming the folder that holds ``folder``.
        folder: the folder the archive extracts to, e.g. ``"cifar-10-batches-bin"``.
        archive: file name of the downloaded archive.
        split_files: split -> its ``.bin`` files, in order.
        loader: the public function that downloads it, for messages.
        shared_first20: path of the 20 first test images in the shared data folder.
    """

    title: str
    key: str
    label_fields: tuple[tuple[str, int], ...]
    env_var: str
    folder: str
    archive: str
    split_files: Mapping[str, tuple[str, ...]]
    loader: str
    shared_first20: str

    @property
    def record_size(self) -> int:
        return len(self.label_fields) + PIXELS

    def default_root(self) -> Path:
        """``$<env_var>``, else ``~/.cache/gradleak/<key>``."""
        env = os.environ.get(self.env_var)
        return Path(env).expanduser() if env else Path.home() / ".cache" / "gradleak" / self.key

    def root(self, root: str | os.PathLike | None) -> Path:
        return Path(root) if root is not None else self.default_root()

    def check_split(self, split: str) -> str:
        if split not in self.split_files:
            raise GradleakError(f"unknown {self.title} split {split!r}; use 'test' or 'train'")
        return split

    def read_bin(self, path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        """Parse one binary file into uint8 ``NHWC`` images and int64 labels ``(N, fields)``.

        Raises:
            GradleakError: when the file is missing, empty, truncated or has a label out of range.
        """
        path = Path(path)
        if not path.is_file():
            raise GradleakError(f"{self.title} batch not found: {path}")
        raw = np.fromfile(path, dtype=np.uint8)
        size = self.record_size
        if raw.size == 0 or raw.size % size:
            raise GradleakError(
                f"{path.name} is not a {self.title} binary batch: {raw.size} bytes is not a "
                f"positive multiple of {size}"
            )
        records = raw.reshape(-1, size)
        n_fields = len(self.label_fields)
        labels = records[:, :n_fields].astype(np.int64)
        for column, (name, count) in enumerate(self.label_fields):
            top = int(labels[:, column].max())
            if top >= count:
                raise GradleakError(
                    f"{path.name}: {name} {top} outside 0..{count - 1} (corrupt file?)"
                )
        images = records[:, n_fields:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), labels

    def batch_dir(self, root: Path) -> Path:
        """``root/<folder>``, or ``root`` itself when it already holds the test file."""
        return root if (root / self.split_files["test"][0]).is_file() else root / self.folder

    def is_downloaded(self, root: str | os.PathLike | None, split: str) -> bool:
        batch_dir = self.batch_dir(self.root(root))
        return all((batch_dir / f).is_file() for f in self.split_files[self.check_split(split)])

    def download(self, root: str | os.PathLike | None, url: str, md5: str) -> Path:
        """Download ``url`` (md5-checked) to ``root`` and extract it; return the batch folder."""
        root = self.root(root)
        archive = download_file(url, root / self.archive, md5)
        safe_extract_tar(archive, root)
        return root / self.folder

    def read_split(
        self,
        root: str | os.PathLike | None,
        split: str,
        *,
        download: bool,
        url: str,
        md5: str,
    ) -> tuple[np.ndarray, np.ndarray, Path]:
        """Images and labels of a split (downloaded first if asked), and the batch folder."""
        split = self.check_split(split)
        root = self.root(root)
        if not self.is_downloaded(root, split):
            if not download:
                raise GradleakError(
                    f"{self.title} binary batches not found under {root}; download them with "
                    f"gradleak.data.{self.loader}(root={str(root)!r}, download=True)"
                )
            self.download(root, url, md5)
        batch_dir = self.batch_dir(root)
        parts = [self.read_bin(batch_dir / f) for f in self.split_files[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return images, labels, batch_dir

    def use_downloaded(self, split: str) -> bool:
        """Whether the default loader reads :meth:`default_root` (present, or named by env)."""
        return self.is_downloaded(None, split) or bool(os.environ.get(self.env_var))

    def shared_first20_set(self, split: str, class_names: Sequence[str]) -> ImageSet:
        """The 20 first test images stored losslessly in the shared data folder.

        Raises:
            GradleakError: for the train split or when the file is absent (says how to download),
                or when a label has no class name.
        """
        shared = shared_data_dir(required=False)
        if split == "test" and shared is not None and (shared / self.shared_first20).is_file():
            path = shared / self.shared_first20
            arrays = read_npz_arrays(path)
            labels = arrays["labels"]
            if len(labels) and int(labels.max()) >= len(class_names):
                raise GradleakError(
                    f"{path}: label {int(labels.max())} outside 0..{len(class_names) - 1}"
                )
            return imageset_from_arrays(
                arrays["images"],
                labels,
                list(class_names),
                source=f"{self.key}:test (first {len(labels)}, {path})",
                id_prefix=f"{self.key}-test",
            )
        raise GradleakError(
            f"{self.title} ({split}) not found under {self.default_root()}; download it once "
            f"with gradleak.data.{self.loader}(download=True)"
        )


def read_names(path: Path, default: Sequence[str]) -> list[str]:
    """Class names from a one-name-per-line file, or ``default`` when absent or of another size."""
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n]
        if len(names) == len(default):
            return names
    return list(default)
