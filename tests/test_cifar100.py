"""Tests for CIFAR-100: the binary reader, its errors, the checked download and ``"cifar100"``."""

from __future__ import annotations

import sys
import tarfile

import numpy as np
import pytest

from gradleak.cli import main
from gradleak.data import (
    CIFAR100_CLASSES,
    from_tensor,
    load_cifar100,
    load_images,
    md5sum,
    read_cifar100_bin,
    shared_data_dir,
)
from gradleak.data import cifar100 as cifar100_module
from gradleak.data.cifar100 import CIFAR100_COARSE_CLASSES
from gradleak.errors import GradleakError
from gradleak.threat.observation import load_observation

SHARED = shared_data_dir(required=False)
needs_shared = pytest.mark.skipif(SHARED is None, reason="shared data folder not available")


@pytest.fixture
def no_dataset_env(monkeypatch, tmp_path):
    """No dataset env vars and an empty home, so nothing downloaded earlier is picked up."""
    monkeypatch.delenv("GRADLEAK_CIFAR100", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def shared_first20() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SHARED / "cifar100/test_first20_lossless.npz", allow_pickle=False) as data:
        return data["images"], data["labels"]


def write_cifar100_bin(path, images: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> None:
    """Records as in the official files: coarse byte, fine byte, then R, G and B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    records = np.concatenate([coarse[:, None], fine[:, None], planes], axis=1)
    path.write_bytes(records.astype(np.uint8).tobytes())


def synthetic(n=6, seed=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    fine = np.array([0, 99, *rng.integers(0, 100, size=n - 2)], dtype=np.int64)
    coarse = np.array([19, 0, *rng.integers(0, 20, size=n - 2)], dtype=np.int64)
    return images, fine, coarse


def test_published_url_and_md5_of_the_binary_version():
    assert (
        cifar100_module.CIFAR100_URL == "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"
    )
    assert cifar100_module.CIFAR100_MD5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert len(CIFAR100_CLASSES) == len(set(CIFAR100_CLASSES)) == 100
    assert list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[54] == "orchid" and CIFAR100_CLASSES[26] == "crab"
    assert len(CIFAR100_COARSE_CLASSES) == 20


def test_binary_round_trip_fine_and_coarse(tmp_path):
    images, fine, coarse = synthetic()
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    write_cifar100_bin(folder / "test.bin", images, fine, coarse)
    write_cifar100_bin(folder / "train.bin", images[::-1], fine[::-1], coarse[::-1])

    got_images, got_fine, got_coarse = read_cifar100_bin(folder / "test.bin")
    assert got_images.dtype == np.uint8 and got_images.shape == (6, 32, 32, 3)
    assert np.array_equal(got_images, images)
    assert got_fine.dtype == np.int64 and got_fine.tolist() == fine.tolist()
    assert got_coarse.dtype == np.int64 and got_coarse.tolist() == coarse.tolist()

    test = load_cifar100(tmp_path, split="test")
    assert np.array_equal(from_tensor(test.images), images)
    assert test.labels.tolist() == fine.tolist()
    assert test.class_names == list(CIFAR100_CLASSES)
    assert test.ids[5] == "cifar100-test-00005" and test.source == "cifar100:test"
    assert test.label_names[:2] == ["apple", "worm"]

    train = load_cifar100(folder, split="train", coarse=True)  # the folder itself also works
    assert np.array_equal(from_tensor(train.images), images[::-1])
    assert train.labels.tolist() == coarse[::-1].tolist()
    assert train.class_names == list(CIFAR100_COARSE_CLASSES)
    assert train.ids[-1] == "cifar100-train-00005" and "coarse" in train.source


def test_label_name_files_are_used_when_complete(tmp_path):
    images, fine, coarse = synthetic(n=2)
    write_cifar100_bin(tmp_path / "test.bin", images, fine, coarse)
    renamed = [f"fine{i}" for i in range(100)]
    (tmp_path / "fine_label_names.txt").write_text("\n".join(renamed) + "\n\n")
    (tmp_path / "coarse_label_names.txt").write_text("only\ntwo\n")  # wrong size: defaults
    assert load_cifar100(tmp_path).class_names == renamed
    assert load_cifar100(tmp_path, coarse=True).class_names == list(CIFAR100_COARSE_CLASSES)


@pytest.mark.parametrize("size", [0, 3074 - 1, 2 * 3074 + 3073, 3073 * 2])
def test_truncated_or_wrong_size_file_is_refused(tmp_path, size):
    path = tmp_path / "test.bin"
    path.write_bytes(b"\x01" * size)
    with pytest.raises(GradleakError, match="not a CIFAR-100 binary batch"):
        read_cifar100_bin(path)
    with pytest.raises(GradleakError, match="not a CIFAR-100 binary batch"):
        load_cifar100(tmp_path)


@pytest.mark.parametrize(
    ("fine", "coarse", "message"),
    [(100, 0, "fine label 100 outside 0..99"), (5, 20, "coarse label 20 outside 0..19")],
)
def test_label_out_of_range_is_refused(tmp_path, fine, coarse, message):
    images, fines, coarses = synthetic(n=3)
    fines[1], coarses[1] = fine, coarse
    write_cifar100_bin(tmp_path / "test.bin", images, fines, coarses)
    with pytest.raises(GradleakError, match=message):
        read_cifar100_bin(tmp_path / "test.bin")


def test_missing_file_and_split_errors(tmp_path):
    with pytest.raises(GradleakError, match="not found"):
        read_cifar100_bin(tmp_path / "test.bin")
    with pytest.raises(GradleakError, match=r"load_cifar100\(root=.*download=True\)"):
        load_cifar100(tmp_path)
    with pytest.raises(GradleakError, match="split"):
        load_cifar100(tmp_path, split="valid")


def test_download_with_file_url_and_checksum_mismatch(tmp_path, monkeypatch):
    images, fine, coarse = synthetic()
    payload = tmp_path / "payload" / "cifar-100-binary"
    payload.mkdir(parents=True)
    write_cifar100_bin(payload / "test.bin", images, fine, coarse)
    archive = tmp_path / "cifar-100-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="cifar-100-binary")
    monkeypatch.setattr(cifar100_module, "CIFAR100_URL", archive.as_uri())

    monkeypatch.setattr(cifar100_module, "CIFAR100_MD5", "0" * 32)
    with pytest.raises(GradleakError, match="checksum mismatch"):
        load_cifar100(tmp_path / "bad", download=True)
    assert not (tmp_path / "bad" / "cifar-100-binary").exists()
    assert not (tmp_path / "bad" / "cifar-100-binary.tar.gz").exists()

    monkeypatch.setattr(cifar100_module, "CIFAR100_MD5", md5sum(archive))
    got = load_cifar100(tmp_path / "root", download=True)
    assert np.array_equal(from_tensor(got.images), images)
    assert got.labels.tolist() == fine.tolist()
    assert (tmp_path / "root" / "cifar-100-binary" / "test.bin").is_file()


def test_env_var_names_the_root(tmp_path, monkeypatch):
    images, fine, coarse = synthetic()
    folder = tmp_path / "data" / "cifar-100-binary"
    folder.mkdir(parents=True)
    write_cifar100_bin(folder / "train.bin", images, fine, coarse)
    monkeypatch.setenv("GRADLEAK_CIFAR100", str(tmp_path / "data"))
    train = load_images("cifar100:train", size=32)
    assert np.array_equal(from_tensor(train.images), images)
    assert train.labels.tolist() == fine.tolist()
    with pytest.raises(GradleakError, match="download=True"):  # set, but no test split there
        load_images("cifar100:test")


@needs_shared
def test_spec_falls_back_to_shared_lossless(no_dataset_env):
    images, labels = shared_first20()
    cifar = load_images("cifar100")
    assert len(cifar) == 20 and tuple(cifar.images.shape) == (20, 3, 32, 32)
    assert cifar.class_names == list(CIFAR100_CLASSES)
    assert np.array_equal(from_tensor(cifar.images), images)
    assert cifar.labels.tolist() == labels.tolist()
    assert set(cifar.labels.tolist()) <= set(range(100))
    assert cifar.ids[0] == "cifar100-test-00000"
    assert cifar.label_names[0] == "mountain"  # the first CIFAR-100 test image
    assert load_images("cifar100:test", n=3).labels.tolist() == labels[:3].tolist()
    with pytest.raises(GradleakError, match="download"):
        load_images("cifar100:train")


@needs_shared
def test_cli_observe_on_cifar100(no_dataset_env, tmp_path, monkeypatch, capsys):
    out = tmp_path / "obs.safetensors"
    monkeypatch.setattr(
        sys,
        "argv",
        ["gradleak", "observe", "--model", "lenet", "--images", "cifar100", "--n-images", "2"]
        + ["--out", str(out)],
    )
    monkeypatch.setenv("COLUMNS", "1000")
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (None, 0), capsys.readouterr().err
    obs = load_observation(out)
    assert obs.model_config["name"] == "lenet"
    assert obs.model_config["num_classes"] == 100  # sized from the 100 class names
    assert obs.batch_size == 2
    assert obs.labels.tolist() == shared_first20()[1][:2].tolist()
    assert obs.truth.ids == ["cifar100-test-00000", "cifar100-test-00001"]
