"""Shared fixtures: the real data sets of the shared data folder."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from gradleak.data import from_tensor, load_images, shared_data_dir


@pytest.fixture(scope="session")
def shared_dir():
    """The shared data folder (GRADLEAK_SHARED_DATA or ../shared/data); skip when absent."""
    path = shared_data_dir(required=False)
    if path is None:
        pytest.skip("shared data folder not found (set GRADLEAK_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A flat folder of two real photos (bundled, saved as 32x32 PNGs)."""
    folder = tmp_path_factory.mktemp("photos")
    batch = load_images("bundled", size=32, n=2)
    for name, pixels in zip(("a.png", "b.png"), from_tensor(batch.images), strict=True):
        Image.fromarray(pixels).save(folder / name)
    return folder


@pytest.fixture(scope="session")
def cifar10(shared_dir):
    """The 20 lossless CIFAR-10 test images, 32x32 RGB."""
    return load_images(shared_dir / "cifar10" / "test_first20_lossless.npz", size=32)


@pytest.fixture(scope="session")
def jpeg100(shared_dir):
    """CIFAR-10 test images, 10 per class (JPEG copies)."""
    return load_images(shared_dir / "cifar10" / "test_jpeg_q75_100.npz")


@pytest.fixture(scope="session")
def flowers(shared_dir):
    """Flowers-17 at 64x64, the first image of each class."""
    return load_images("flowers17", size=64).select(distinct_labels=True)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The test tensors are tiny: extra threads only add overhead, and OpenMP threads that spin
    on a busy machine make each op up to 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bundled():
    """The real photos bundled with scikit-image at 32x32 (8 images, labels 0..7)."""
    return load_images("bundled", size=32)
