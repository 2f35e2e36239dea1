"""Tests of the model registry, weight files and the pretrained CIFAR-10 ResNets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gradleak.errors import GradleakError
from gradleak.models import (
    ImageClassifier,
    build_model,
    list_models,
    load_weights,
    model_info,
    save_weights,
)
from gradleak.models.registry import _pretrained_path

ALL = [
    "convnet",
    "fc_relu",
    "lenet",
    "mlp4",
    "mlp4_relu",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "rgap_cnn",
]
PRETRAINED = ["resnet20", "resnet32", "resnet44", "resnet56"]
# Small widths keep the double-backward test fast; the architecture is unchanged.
SMALL = {"convnet": 8, "resnet18": 8, "mlp4": 32, "mlp4_relu": 32}


def _shared_data() -> Path:
    root = os.environ.get("GRADLEAK_SHARED_DATA")
    if root:
        return Path(root)
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo / "shared" / "data", repo.parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def _cifar10(file: str) -> tuple[torch.Tensor, torch.Tensor]:
    path = _shared_data() / "cifar10" / file
    weights = _shared_data() / "models" / "resnet_cifar10"
    if not path.is_file() or not weights.is_dir():
        pytest.skip(f"shared data absent: {path}")
    data = np.load(path, allow_pickle=False)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(data["labels"])


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_list_models_sorted_and_complete():
    assert list_models() == ALL


def test_model_info():
    info = model_info("mlp4")
    assert info["width"] == 256 and info["description"]
    assert model_info("resnet20")["pretrained"] and not info["pretrained"]
    json.dumps([model_info(n) for n in ALL])


def test_unknown_name():
    with pytest.raises(GradleakError, match="unknown model 'foo'; choose one of: convnet"):
        build_model("foo")
    with pytest.raises(GradleakError, match="unknown model"):
        model_info("foo")


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"in_channels": 2}, {"image_size": -1}, {"width": 1.5}, {"seed": "x"}],
)
def test_bad_arguments(kwargs):
    with pytest.raises(GradleakError):
        build_model("mlp4", **kwargs)


def test_too_small_image():
    with pytest.raises(GradleakError, match="too small for convnet"):
        build_model("convnet", image_size=8)


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet20"])
def test_determinism_by_seed(name):
    state = torch.get_rng_state()
    a = _params(build_model(name, seed=3))
    assert torch.equal(torch.get_rng_state(), state), "global RNG disturbed"
    assert _equal(a, _params(build_model(name, seed=3)))
    assert not _equal(a, _params(build_model(name, seed=4)))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(3, 32), (1, 28)])
def test_forward_shape_and_config(name, shape):
    channels, size = shape
    model = build_model(name, num_classes=7, in_channels=channels, image_size=size)
    config = json.loads(json.dumps(model.config))
    assert set(config) == {
        "name",
        "num_classes",
        "in_channels",
        "image_size",
        "width",
        "mean",
        "std",
    }
    rebuilt = build_model(**{k: v for k, v in config.items() if k not in ("mean", "std")})
    assert _equal(_params(model), _params(rebuilt))
    assert build_model(**config).config == model.config
    assert isinstance(model, ImageClassifier)
    assert model.input_shape == (channels, size, size)
    assert model.mean.shape == model.std.shape == (1, channels, 1, 1)
    assert "mean" not in model.state_dict()
    assert model(torch.rand(2, channels, size, size)).shape == (2, 7)
    assert model.has_batchnorm() == (
        name not in ("mlp4", "mlp4_relu", "lenet", "fc_relu", "rgap_cnn")
    )


def test_layer_names():
    mlp = build_model("mlp4", width=16)
    assert [n for n, _ in mlp.net.named_children() if n.startswith("fc")] == [
        "fc1",
        "fc2",
        "fc3",
        "fc4",
    ]
    assert mlp.net.fc1.bias is not None and mlp.net.fc1.in_features == 3 * 32 * 32
    lenet = build_model("lenet").net
    assert lenet.fc.in_features == 12 * 8 * 8
    assert all(p.abs().max() <= 0.5 for p in lenet.parameters())
    assert build_model("convnet", width=4).net.linear.in_features == 36 * 4


def test_resnet20_matches_shared_keys():
    keys = _params(build_model("resnet20").net)
    assert "layer3.2.conv2.weight" in keys and "linear.weight" in keys
    assert not any("shortcut" in k for k in keys)  # option A has no parameters
    assert sum(p.numel() for p in build_model("resnet20").parameters()) == 269722


@pytest.mark.parametrize("name", ALL)
def test_double_backward(name):
    model = build_model(name, width=SMALL.get(name))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = F.cross_entropy(model(x), torch.tensor([1, 2]))
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    sum(g.pow(2).sum() for g in grads).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_save_load_roundtrip(tmp_path):
    model = build_model("resnet20", seed=1)
    model(torch.rand(4, 3, 32, 32))  # move BatchNorm running statistics off their init
    path = save_weights(model, tmp_path / "sub" / "m.safetensors", {"note": "x", "step": 3})
    assert set(load_file(path)) == set(model.net.state_dict())
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["config"]) == model.config and meta["step"] == "3"
    other = build_model("resnet20", seed=2)
    assert load_weights(other, path) is other
    assert _equal(_params(model), _params(other))
    assert _equal(_params(model), _params(build_model("resnet20", weights=path)))


def test_missing_num_batches_tracked_is_tolerated(tmp_path):
    model = build_model("resnet20", seed=1)
    tensors = {k: v for k, v in model.net.state_dict().items() if "num_batches" not in k}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    loaded = load_weights(build_model("resnet20"), tmp_path / "m.safetensors")
    assert torch.equal(loaded.net.conv1.weight, model.net.conv1.weight)
    del tensors["bn1.running_mean"]
    save_file(tensors, str(tmp_path / "m.safetensors"))
    with pytest.raises(GradleakError, match=r"missing keys bn1\.running_mean"):
        load_weights(build_model("resnet20"), tmp_path / "m.safetensors")


def test_load_mismatched_file(tmp_path):
    path = save_weights(build_model("mlp4", width=64), tmp_path / "m.safetensors")
    with pytest.raises(GradleakError, match=r"m\.safetensors.*shape mismatch fc1\.weight"):
        load_weights(build_model("mlp4", width=32), path)
    with pytest.raises(
        GradleakError, match=r"missing keys body\.0\.weight.*unexpected keys fc1\.bias"
    ):
        build_model("lenet", weights=path)


def test_load_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(GradleakError, match="bad.safetensors is not a valid safetensors file"):
        load_weights(build_model("mlp4"), bad)
    with pytest.raises(GradleakError, match="does not exist"):
        load_weights(build_model("mlp4"), tmp_path / "absent.safetensors")


def test_pretrained_errors(monkeypatch, tmp_path):
    with pytest.raises(GradleakError, match="no pretrained weights for mlp4"):
        build_model("mlp4", weights="pretrained")
    with pytest.raises(GradleakError, match="need num_classes=10.*got num_classes=100"):
        build_model("resnet20", num_classes=100, weights="pretrained")
    monkeypatch.setenv("GRADLEAK_SHARED_DATA", str(tmp_path))
    with pytest.raises(GradleakError, match=r"not found .*set \$GRADLEAK_SHARED_DATA"):
        _pretrained_path("resnet20")


@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_accuracy(name):
    images, labels = _cifar10("test_jpeg_q75_100.npz")
    model = build_model(name, weights="pretrained").eval()
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    # Measured 0.82-0.84: JPEG q75 costs these models about 10 points (lossless: 20/20 below).
    assert accuracy >= 0.80


def test_pretrained_resnet20_lossless():
    images, labels = _cifar10("test_first20_lossless.npz")
    model = build_model("resnet20", weights="pretrained").eval()
    with torch.no_grad():
        correct = (model(images).argmax(1) == labels).sum().item()
    assert correct >= 18
