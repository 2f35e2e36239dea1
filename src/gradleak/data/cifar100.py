"""CIFAR-100 from the official *binary version* (no pickles), with an optional checked download.

Each ``*.bin`` file is a run of 3074-byte records: the coarse label byte (0..19), the fine label
byte (0..99), then 3072 bytes of pixels (1024 red, 1024 green, 1024 blue; rows top to bottom).
Images are labelled with their fine label (100 classes) unless ``coarse=True`` asks for the 20
superclasses. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009 -
https://www.cs.toronto.edu/~kriz/cifar.html (please cite).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gradleak.data.cifar_binary import CifarFormat, read_names
from gradleak.data.imageset import ImageSet
from gradleak.data.npz import imageset_from_arrays

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
#: md5 of the binary version as published on the CIFAR page (not the python version's).
CIFAR100_MD5 = "03b5dce01913d631647c71ecec9e9cb8"
#: The 100 fine label names, index = label, as in ``fine_label_names.txt``.
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)
#: The 20 coarse label names (superclasses), as in ``coarse_label_names.txt``.
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
)
#: Environment variable naming the folder that holds (or will hold) ``cifar-100-binary/``.
ENV_VAR = "GRADLEAK_CIFAR100"
BATCH_DIR = "cifar-100-binary"
SPLIT_FILES = {"test": ("test.bin",), "train": ("train.bin",)}
#: The 20 first CIFAR-100 test images, lossless, in the shared data folder (fine labels).
SHARED_FIRST20 = "cifar100/test_first20_lossless.npz"

FORMAT = CifarFormat(
    title="CIFAR-100",
    key="cifar100",
    label_fields=(
        ("coarse label", len(CIFAR100_COARSE_CLASSES)),
        ("fine label", len(CIFAR100_CLASSES)),
    ),
    env_var=ENV_VAR,
    folder=BATCH_DIR,
    archive="cifar-100-binary.tar.gz",
    split_files=SPLIT_FILES,
    loader="load_cifar100",
    shared_first20=SHARED_FIRST20,
)


def default_root() -> Path:
    """``$GRADLEAK_CIFAR100``, else ``~/.cache/gradleak/cifar100``."""
    return FORMAT.default_root()


def read_cifar100_bin(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one CIFAR-100 binary file into uint8 ``NHWC`` images, fine and coarse labels.

    Returns:
        ``(images, fine, coarse)``; the labels are int64, fine in 0..99 and coarse in 0..19.

    Raises:
        GradleakError: when the file is missing, empty, truncated or has a label out of range.
    """
    images, labels = FORMAT.read_bin(path)
    return images, labels[:, 1], labels[:, 0]


def is_downloaded(root: str | os.PathLike | None = None, split: str = "test") -> bool:
    """Whether the binary file for ``split`` is present under ``root``."""
    return FORMAT.is_downloaded(root, split)


def download_cifar100(root: str | os.PathLike | None = None) -> Path:
    """Download and extract the CIFAR-100 binary archive (about 160 MB) into ``root``."""
    return FORMAT.download(root, CIFAR100_URL, CIFAR100_MD5)


def load_cifar100(
    root: str | os.PathLike | None = None,
    split: str = "test",
    download: bool = False,
    *,
    coarse: bool = False,
) -> ImageSet:
    """Load a CIFAR-100 split (10,000 test or 50,000 train images, 32x32 RGB).

    Args:
        root: folder holding ``cifar-100-binary/`` (or that folder itself); default
            ``$GRADLEAK_CIFAR100`` or ``~/.cache/gradleak/cifar100``.
        split: ``"test"`` or ``"train"``.
        download: fetch the official archive (md5-checked) when the files are missing.
        coarse: label images with their superclass (20 classes) instead of their fine class
            (100 classes).

    Returns:
        An :class:`ImageSet` with ids ``cifar100-<split>-00000`` ... in file order.

    Examples::

        >>> test = load_cifar100(download=True)
        >>> batch = test.select(8, distinct_labels=True)
    """
    images, labels, batch_dir = FORMAT.read_split(
        root, split, download=download, url=CIFAR100_URL, md5=CIFAR100_MD5
    )
    if coarse:
        names = read_names(batch_dir / "coarse_label_names.txt", CIFAR100_COARSE_CLASSES)
    else:
        names = read_names(batch_dir / "fine_label_names.txt", CIFAR100_CLASSES)
    return imageset_from_arrays(
        images,
        labels[:, 0 if coarse else 1],
        names,
        source=f"cifar100:{split}" + (" (coarse labels)" if coarse else ""),
        id_prefix=f"cifar100-{split}",
    )


def load_cifar100_default(split: str = "test") -> ImageSet:
    """CIFAR-100 for ``load_images("cifar100[:split]")``, without any download.

    Uses the binary files under :func:`default_root` when present; otherwise, for the test
    split, the 20 first test images stored losslessly in the shared data folder
    (``cifar100/test_first20_lossless.npz``), identical to the official ones. Fine labels.
    """
    split = FORMAT.check_split(split)
    if FORMAT.use_downloaded(split):
        return load_cifar100(None, split)
    return FORMAT.shared_first20_set(split, CIFAR100_CLASSES)
