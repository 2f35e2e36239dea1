"""Tests for gradleak.data: loaders of real images, their conversions and their errors."""

from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from gradleak.data import (
    BUNDLED_CIFAR10_LABELS,
    CIFAR10_CLASSES,
    ImageSet,
    bundled_photos,
    center_crop_resize,
    download_file,
    from_tensor,
    load_cifar10,
    load_image_folder,
    load_images,
    load_mnist,
    load_npz,
    md5sum,
    read_idx,
    safe_extract_tar,
    shared_data_dir,
    to_channels,
    to_tensor,
)
from gradleak.data import cifar10 as cifar10_module
from gradleak.data.transforms import prepare_images
from gradleak.errors import GradleakError

SHARED = shared_data_dir(required=False)
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder not available")


@pytest.fixture
def no_dataset_env(monkeypatch, tmp_path):
    """No dataset env vars and an empty home, so nothing downloaded earlier is picked up."""
    monkeypatch.delenv("GRADLEAK_CIFAR10", raising=False)
    monkeypatch.delenv("GRADLEAK_MNIST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def cifar_first20() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHARED / "cifar10/test_first20_lossless.npz", allow_pickle=False) as data:
        return data["images"], data["labels"]


def write_cifar_bin(path, images: np.ndarray, labels: np.ndarray) -> None:
    records = np.concatenate(
        [labels.astype(np.uint8)[:, None], images.transpose(0, 3, 1, 2).reshape(len(images), -1)],
        axis=1,
    )
    path.write_bytes(records.astype(np.uint8).tobytes())


def save_png(path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def random_uint8(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# ----------------------------------------------------------------------------- bundled photos


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_bundled_photos_shapes_and_range(size, channels):
    photos = bundled_photos(size=size, channels=channels)
    assert photos.images.shape == (len(photos), channels, size, size)
    assert 6 <= len(photos) <= 8
    assert photos.images.dtype == torch.float32 and photos.labels.dtype == torch.int64
    assert photos.images.min() >= 0 and photos.images.max() <= 1
    assert photos.labels.tolist() == list(range(len(photos)))
    assert len(set(photos.class_names)) == len(photos) and "cat" in photos.class_names
    assert len(set(photos.ids)) == len(photos)
    # real photos: no two alike, none flat
    flat = photos.images.flatten(1)
    assert (flat.std(dim=1) > 0.05).all()
    assert torch.cdist(flat, flat).add(100 * torch.eye(len(photos))).min() > 1.0


def test_bundled_is_the_default_spec():
    default = load_images(None, size=32, n=3)
    assert default.class_names == bundled_photos().class_names
    assert torch.equal(default.images, bundled_photos().images[:3])
    assert set(BUNDLED_CIFAR10_LABELS) == set(default.class_names)
    assert CIFAR10_CLASSES[BUNDLED_CIFAR10_LABELS["cat"]] == "cat"


# ----------------------------------------------------------------------------- folders, files


@needs_shared
def test_flowers17_originals_image_folder():
    flowers = load_image_folder(SHARED / "flowers17" / "originals", size=32)
    assert len(flowers) == 85 and flowers.images.shape == (85, 3, 32, 32)
    assert len(flowers.class_names) == 17
    assert flowers.class_names[0] == "Daffodil"
    assert not any(name[:2].isdigit() for name in flowers.class_names)
    assert torch.bincount(flowers.labels).tolist() == [5] * 17
    assert flowers.ids[0] == "00_Daffodil/image_0001.jpg"
    again = load_images(SHARED / "flowers17" / "originals", size=16, channels=1, n=7)
    assert again.images.shape == (7, 1, 16, 16) and again.ids == flowers.ids[:7]


def test_flat_folder_file_and_list(tmp_path):
    save_png(tmp_path / "b.png", random_uint8((40, 60, 3), seed=1))
    save_png(tmp_path / "a.png", random_uint8((50, 50), seed=2))  # gray
    (tmp_path / "notes.txt").write_text("not an image, ignored")
    folder = load_images(tmp_path, size=24)
    assert folder.ids == ["a.png", "b.png"] and folder.class_names == ["unknown"]
    assert folder.images.shape == (2, 3, 24, 24) and folder.labels.tolist() == [0, 0]
    gray = folder.images[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])

    single = load_images(tmp_path / "b.png", size=24)
    assert torch.equal(single.images[0], folder.images[1])
    listed = load_images(f"{tmp_path / 'b.png'}, {tmp_path / 'a.png'}", size=24)
    assert torch.equal(listed.images, folder.images.flip(0))


def test_non_image_file_is_named(tmp_path):
    save_png(tmp_path / "cls" / "good.png", random_uint8((8, 8, 3)))
    (tmp_path / "cls" / "broken.jpg").write_text("this is not a jpeg")
    with pytest.raises(GradleakError, match="cannot decode image 'broken.jpg'"):
        load_images(tmp_path)


def test_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradleakError, match="no images"):
        load_images(tmp_path / "empty")
    with pytest.raises(GradleakError, match="does not exist"):
        load_images(tmp_path / "nope")
    with pytest.raises(GradleakError, match="does not exist"):
        load_images(str(tmp_path / "nope.png"))
    with pytest.raises(GradleakError, match="known dataset"):
        load_images("imagenet")
    with pytest.raises(GradleakError, match="channels"):
        load_images("bundled", channels=2)


# ----------------------------------------------------------------------------- CIFAR-10


@needs_shared
def test_cifar10_binary_round_trip(tmp_path):
    images, labels = cifar_first20()
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    write_cifar_bin(batches / "test_batch.bin", images, labels)
    for i in range(5):  # the train split: five batches of four
        part = slice(4 * i, 4 * i + 4)
        write_cifar_bin(batches / f"data_batch_{i + 1}.bin", images[part], labels[part])
    (batches / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n")

    test = load_cifar10(tmp_path, split="test")
    assert np.array_equal(from_tensor(test.images), images)
    assert test.labels.tolist() == labels.tolist()
    assert test.class_names == list(CIFAR10_CLASSES)
    assert test.ids[3] == "cifar10-test-00003" and test.source == "cifar10:test"
    train = load_cifar10(batches, split="train")  # the batches folder itself also works
    assert np.array_equal(from_tensor(train.images), images)
    assert train.ids[-1] == "cifar10-train-00019"

    (batches / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(GradleakError, match="not a CIFAR-10 binary batch"):
        load_cifar10(tmp_path)
    with pytest.raises(GradleakError, match="split"):
        load_cifar10(tmp_path, split="valid")


def test_cifar10_missing_says_how_to_download(tmp_path):
    with pytest.raises(GradleakError, match="download=True"):
        load_cifar10(tmp_path)


@needs_shared
def test_cifar10_download_extract_with_file_url(tmp_path, monkeypatch):
    images, labels = cifar_first20()
    payload = tmp_path / "payload" / "cifar-10-batches-bin"
    payload.mkdir(parents=True)
    write_cifar_bin(payload / "test_batch.bin", images, labels)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="cifar-10-batches-bin")
    monkeypatch.setattr(cifar10_module, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", md5sum(archive))

    got = load_cifar10(tmp_path / "root", download=True)
    assert np.array_equal(from_tensor(got.images), images)

    monkeypatch.setattr(cifar10_module, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(GradleakError, match="checksum mismatch"):
        load_cifar10(tmp_path / "other", download=True)
    assert not (tmp_path / "other" / "cifar-10-batches-bin").exists()


@needs_shared
def test_cifar10_spec_falls_back_to_shared_lossless(no_dataset_env):
    images, labels = cifar_first20()
    cifar = load_images("cifar10")
    assert len(cifar) == 20 and cifar.class_names == list(CIFAR10_CLASSES)
    assert np.array_equal(from_tensor(cifar.images), images)
    assert cifar.labels.tolist() == labels.tolist()
    assert cifar.ids[0] == "cifar10-test-00000"
    with pytest.raises(GradleakError, match="download"):
        load_images("cifar10:train")


def test_unsafe_tar_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(GradleakError, match="unsafe path"):
        safe_extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


# ----------------------------------------------------------------------------- MNIST


@needs_shared
def test_mnist_idx_from_shared_gz(no_dataset_env):
    digits = load_mnist(SHARED / "mnist")
    assert digits.images.shape == (10000, 1, 28, 28)
    assert digits.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert digits.class_names == [str(d) for d in range(10)]
    assert digits.ids[0] == "mnist-test-00000"
    small = load_images("mnist", size=32, channels=3, n=5)  # found via the shared folder
    assert small.images.shape == (5, 3, 32, 32) and small.labels.tolist() == [7, 2, 1, 0, 4]


def test_corrupt_idx_is_refused(tmp_path):
    header = np.array([2049, 2, 2, 2], dtype=">i4").tobytes()  # label magic on an image file
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(header + bytes(8)))
    with pytest.raises(GradleakError, match="magic"):
        read_idx(bad, 2051)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(np.array([2051, 2, 2, 2], dtype=">i4").tobytes() + bytes(5))
    with pytest.raises(GradleakError, match="corrupt"):
        read_idx(short, 2051)
    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"definitely not gzip")
    with pytest.raises(GradleakError, match="cannot read"):
        read_idx(notgz, 2051)


# ----------------------------------------------------------------------------- npz


def test_npz_loading(tmp_path):
    gray = random_uint8((6, 20, 20))
    np.savez(tmp_path / "gray.npz", images=gray, labels=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_npz(tmp_path / "gray.npz")
    assert ds.images.shape == (6, 1, 20, 20) and ds.class_names == ["0", "1", "2"]
    assert np.array_equal(from_tensor(ds.images)[..., 0], gray)
    assert ds.ids[5] == "gray-00005"
    rgb = load_images(tmp_path / "gray.npz", size=10, channels=3, n=4)
    assert rgb.images.shape == (4, 3, 10, 10)

    color = random_uint8((3, 8, 8, 3))
    names = np.array(["x", "y"])
    np.savez(tmp_path / "color.npz", images=color, labels=np.array([1, 0, 1]), class_names=names)
    ds = load_images(tmp_path / "color.npz", size=8)
    assert ds.class_names == ["x", "y"] and np.array_equal(from_tensor(ds.images), color)

    np.savez(tmp_path / "nolabels.npz", images=color)
    with pytest.raises(GradleakError, match="labels"):
        load_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "pickled.npz", images=np.array([{}], dtype=object), labels=np.zeros(1))
    with pytest.raises(GradleakError):
        load_npz(tmp_path / "pickled.npz")
    np.savez(tmp_path / "float.npz", images=color.astype(np.float32), labels=np.zeros(3))
    with pytest.raises(GradleakError, match="uint8"):
        load_npz(tmp_path / "float.npz")


@needs_shared
def test_flowers17_spec():
    flowers = load_images("flowers17", size=64)
    assert flowers.images.shape == (1360, 3, 64, 64)
    assert torch.bincount(flowers.labels).tolist() == [80] * 17
    assert flowers.class_names[0] == "Daffodil"


# ----------------------------------------------------------------------------- ImageSet.select


def make_set(labels: list[int]) -> ImageSet:
    n = len(labels)
    return ImageSet(
        images=torch.arange(n, dtype=torch.float32).div(n).view(n, 1, 1, 1).expand(n, 1, 2, 2),
        labels=torch.tensor(labels, dtype=torch.int64),
        class_names=[f"c{i}" for i in range(max(labels) + 1)],
        source="synthetic",
        ids=[f"img{i}" for i in range(n)],
    )


def test_select_semantics():
    ds = make_set([3, 1, 3, 2, 1, 1, 0, 2, 1])
    assert ds.select(4).ids == ["img0", "img1", "img2", "img3"]
    assert ds.select(2, start=7).ids == ["img7", "img8"]
    distinct = ds.select(3, distinct_labels=True)
    assert distinct.ids == ["img0", "img1", "img3"] and distinct.labels.tolist() == [3, 1, 2]
    assert ds.select(distinct_labels=True).labels.tolist() == [3, 1, 2, 0]
    # label 3 (first image) has only 2 members; label 1 is the first with >= 3
    same = ds.select(3, same_label=True)
    assert same.ids == ["img1", "img4", "img5"] and set(same.labels.tolist()) == {1}
    assert ds.select(2, same_label=True).labels.tolist() == [3, 3]
    assert len(ds.subset(torch.tensor([8, 0]))) == 2 and ds.subset([8, 0]).ids == ["img8", "img0"]
    with pytest.raises(GradleakError, match="distinct labels"):
        ds.select(5, distinct_labels=True)
    with pytest.raises(GradleakError, match="no label has 5"):
        ds.select(5, same_label=True)
    with pytest.raises(GradleakError, match="only 9"):
        ds.select(10)
    with pytest.raises(GradleakError, match="cannot both"):
        ds.select(2, distinct_labels=True, same_label=True)


# ----------------------------------------------------------------------------- download, shared


def test_download_file_md5(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"gradient leakage" * 100)
    good = md5sum(source)
    dest = download_file(source.as_uri(), tmp_path / "out" / "copy.bin", good)
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(GradleakError, match="checksum mismatch"):
        download_file(source.as_uri(), tmp_path / "out" / "bad.bin", "f" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]  # no leftovers
    with pytest.raises(GradleakError, match="cannot download"):
        download_file((tmp_path / "absent.bin").as_uri(), tmp_path / "out" / "x.bin", good)


def test_shared_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADLEAK_SHARED_DATA", str(tmp_path / "missing"))
    assert shared_data_dir(required=False) is None
    with pytest.raises(GradleakError, match="GRADLEAK_SHARED_DATA"):
        shared_data_dir()
    monkeypatch.setenv("GRADLEAK_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path.resolve()


# ----------------------------------------------------------------------------- transforms


def test_transforms():
    rgb = random_uint8((5, 7, 9, 3))
    assert np.array_equal(from_tensor(to_tensor(rgb)), rgb)
    assert to_tensor(rgb).shape == (5, 3, 7, 9)
    assert to_channels(rgb[0], 1).shape == (7, 9, 1)
    assert np.array_equal(to_channels(rgb[0, ..., :1], 3), np.repeat(rgb[0, ..., :1], 3, -1))
    gray = np.asarray(Image.fromarray(rgb[0]).convert("L"))
    assert np.abs(to_channels(rgb[0], 1)[..., 0].astype(int) - gray).max() <= 1
    # center crop of a wide image keeps the middle square
    wide = np.zeros((4, 8), dtype=np.uint8)
    wide[:, 2:6] = 255
    assert (center_crop_resize(wide, 4) == 255).all()
    # one image at a time == the batched path
    stack = prepare_images(rgb, 4, 1)
    for i in range(len(rgb)):
        assert np.array_equal(stack[i], center_crop_resize(to_channels(rgb[i], 1), 4))
    big = center_crop_resize(random_uint8((30, 30, 3)), 60)
    assert big.shape == (60, 60, 3) and big.dtype == np.uint8
