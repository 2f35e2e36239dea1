"""The :class:`ImageSet`: a batch of real images with labels, class names and stable ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradleak.errors import GradleakError


@dataclass
class ImageSet:
    """Images with their labels, as every loader in :mod:`gradleak.data` returns them.

    Args:
        images: ``(N, C, H, W)`` float32 tensor with values in [0, 1].
        labels: ``(N,)`` int64 tensor; ``class_names[labels[i]]`` names image ``i``.
        class_names: index -> class name.
        source: human-readable origin, e.g. ``"cifar10:test"`` or a path.
        ids: one stable id per image, e.g. ``"cifar10-test-00003"`` or a relative file path.

    Examples::

        >>> photos = load_images("bundled", size=32)
        >>> batch = photos.select(4, distinct_labels=True)
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    source: str
    ids: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4:
            shape = tuple(getattr(self.images, "shape", ()))
            raise GradleakError(f"ImageSet.images must be an NCHW tensor, got shape {shape}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.ndim != 1:
            raise GradleakError("ImageSet.labels must be a 1-D tensor")
        n = self.images.shape[0]
        if self.labels.shape[0] != n or len(self.ids) != n:
            raise GradleakError(
                f"ImageSet has {n} images but {self.labels.shape[0]} labels and {len(self.ids)} ids"
            )
        self.class_names = [str(name) for name in self.class_names]
        self.ids = [str(i) for i in self.ids]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape)
        return (
            f"ImageSet({len(self)} images {shape}, {len(self.class_names)} classes, "
            f"source={self.source!r})"
        )

    @property
    def label_names(self) -> list[str]:
        """The class name of each image, in order."""
        return [self.class_names[int(i)] for i in self.labels]

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray | slice) -> ImageSet:
        """The images at ``indices`` (ints, index tensor, boolean mask or slice), in order."""
        if isinstance(indices, slice):
            idx = list(range(len(self)))[indices]
        else:
            t = torch.as_tensor(indices)
            if t.dtype == torch.bool:  # a mask
                if t.shape != (len(self),):
                    raise GradleakError(f"mask has shape {tuple(t.shape)}, expected ({len(self)},)")
                t = t.nonzero().reshape(-1)
            idx = [int(i) for i in t.reshape(-1).tolist()]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise GradleakError(f"index {i} out of range for an ImageSet of {len(self)}")
        index = torch.tensor(idx, dtype=torch.long)
        return ImageSet(
            images=self.images[index],
            labels=self.labels[index],
            class_names=list(self.class_names),
            source=self.source,
            ids=[self.ids[i] for i in idx],
        )

    def select(
        self,
        n: int | None = None,
        *,
        distinct_labels: bool = False,
        same_label: bool = False,
        start: int = 0,
    ) -> ImageSet:
        """Pick a batch of images, deterministically, from position ``start`` on.

        Args:
            n: how many images; ``None`` takes all that qualify.
            distinct_labels: greedily the first ``n`` images whose labels all differ
                (``n=None``: the first image of each label).
            same_label: the first ``n`` images sharing the label of the first image whose label
                has at least ``n`` members (``n=None``: all images with the first image's label).
            start: ignore the images before this position.

        Raises:
            GradleakError: when the request cannot be met (too few images or labels).
        """
        if distinct_labels and same_label:
            raise GradleakError("select: distinct_labels and same_label cannot both be set")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise GradleakError(f"select: n must be a positive integer or None, got {n!r}")
        if not isinstance(start, int) or not 0 <= start <= len(self):
            raise GradleakError(f"select: start must be in [0, {len(self)}], got {start!r}")
        labels = [int(x) for x in self.labels[start:].tolist()]
        if not labels:
            raise GradleakError(f"select: no images from position {start} of {len(self)}")

        if distinct_labels:
            seen: set[int] = set()
            idx = []
            for pos, label in enumerate(labels, start):
                if label not in seen:
                    seen.add(label)
                    idx.append(pos)
                    if n is not None and len(idx) == n:
                        break
            if n is not None and len(idx) < n:
                raise GradleakError(
                    f"select: asked for {n} images with distinct labels but only {len(idx)} "
                    f"labels occur from position {start}"
                )
            return self.subset(idx)

        if same_label:
            counts = Counter(labels)
            need = n if n is not None else 1
            target = next((lab for lab in labels if counts[lab] >= need), None)
            if target is None:
                raise GradleakError(
                    f"select: no label has {n} images from position {start} "
                    f"(largest class has {max(counts.values())})"
                )
            idx = [pos for pos, lab in enumerate(labels, start) if lab == target]
            return self.subset(idx if n is None else idx[:n])

        positions = list(range(start, len(self)))
        if n is None:
            return self.subset(positions)
        if n > len(labels):
            raise GradleakError(
                f"select: asked for {n} images but only {len(labels)} are available "
                f"from position {start}"
            )
        return self.subset(positions[:n])
