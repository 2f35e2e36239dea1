"""Real images for attacks: bundled photos, CIFAR-10/100, MNIST, Flowers-17, npz files and folders.

Every loader returns an :class:`ImageSet` of float32 ``NCHW`` images in [0, 1] with int64
labels. :func:`load_images` is the one entry point taking a short spec (``"bundled"``,
``"cifar10"``, a folder, ...); the dataset loaders below it can also download the public
originals (md5-checked). Nothing is ever unpickled.
"""

from gradleak.data.bundled import BUNDLED_CIFAR10_LABELS, BUNDLED_PHOTOS, bundled_photos
from gradleak.data.cifar10 import CIFAR10_CLASSES, load_cifar10, read_cifar10_bin
from gradleak.data.cifar100 import CIFAR100_CLASSES, load_cifar100, read_cifar100_bin
from gradleak.data.download import download_file, md5sum, safe_extract_tar
from gradleak.data.folder import IMAGE_EXTENSIONS, load_image_files, load_image_folder, read_image
from gradleak.data.imageset import ImageSet
from gradleak.data.load import DATASETS, load_flowers17, load_images
from gradleak.data.mnist import MNIST_CLASSES, load_mnist, read_idx
from gradleak.data.npz import load_npz
from gradleak.data.shared import shared_data_dir, shared_file
from gradleak.data.transforms import center_crop_resize, from_tensor, to_channels, to_tensor

__all__ = [
    "BUNDLED_CIFAR10_LABELS",
    "BUNDLED_PHOTOS",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MNIST_CLASSES",
    "ImageSet",
    "bundled_photos",
    "center_crop_resize",
    "download_file",
    "from_tensor",
    "load_cifar10",
    "load_cifar100",
    "load_flowers17",
    "load_image_files",
    "load_image_folder",
    "load_images",
    "load_mnist",
    "load_npz",
    "md5sum",
    "read_cifar10_bin",
    "read_cifar100_bin",
    "read_idx",
    "read_image",
    "safe_extract_tar",
    "shared_data_dir",
    "shared_file",
    "to_channels",
    "to_tensor",
]
