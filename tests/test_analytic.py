"""Analytic attacks (bias attack, R-GAP) and R-GAP's rank analysis, on real images."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from gradleak.analysis.rank import layer_rank_analysis
from gradleak.attacks.bias import BiasAttack
from gradleak.attacks.rgap import RGAP, rgap_invert
from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.gradient.linear import invert_linear_layer
from gradleak.gradient.structure import feedforward_layers
from gradleak.metrics import psnr
from gradleak.models import ImageClassifier, build_model
from gradleak.threat import observe


def _net(*layers: nn.Module, image_size: int = 8) -> ImageClassifier:
    config = {
        "name": "custom",
        "num_classes": 10,
        "in_channels": 3,
        "image_size": image_size,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(OrderedDict((f"m{i}", m) for i, m in enumerate(layers)))
    return ImageClassifier(net, config)


def _strided_net() -> ImageClassifier:
    """Stride-2 conv 3 -> 4 on 8x8: 192 unknowns, 108 + 64 equations (rank-deficient)."""
    return _net(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


# ---------------------------------------------------------------------- bias attack
def test_invert_linear_layer_is_exact():
    layer = nn.Linear(50, 7).double()
    x = torch.randn(1, 50, dtype=torch.float64)
    loss = nn.functional.cross_entropy(layer(x), torch.tensor([3]))
    weight_grad, bias_grad = torch.autograd.grad(loss, [layer.weight, layer.bias])
    bias_grad[0] = 0.0  # a row without information is ignored
    weight_grad[0] = 0.0
    assert (invert_linear_layer(weight_grad, bias_grad) - x[0]).abs().max() < 1e-13
    with pytest.raises(GradleakError, match="bias gradient is zero"):
        invert_linear_layer(weight_grad, torch.zeros(7))
    with pytest.raises(GradleakError, match="not those of one linear layer"):
        invert_linear_layer(weight_grad, bias_grad[:3])


def test_bias_attack_is_exact_at_batch_size_one(cifar10, flowers):
    for images, size in ((cifar10.images[:2], 32), (flowers.images[:2], 64)):
        model = build_model("mlp4", image_size=size, seed=0)
        for i in range(len(images)):
            truth = images[i : i + 1]
            label = torch.tensor([i + 3])
            observation = observe(model, truth, label, knows_labels=False)
            reconstruction = BiasAttack()(observation)
            assert psnr(reconstruction.images, truth).item() >= 80
            assert reconstruction.labels.tolist() == [i + 3]  # iDLG's analytic label
            assert reconstruction.notes["mixture"] is False


def test_bias_attack_float64_observation(cifar10):
    model = build_model("mlp4", seed=1).double()
    truth = cifar10.images[:1].double()
    observation = observe(model, truth, torch.tensor([2]))
    assert observation.gradients["fc1.weight"].dtype == torch.float64
    reconstruction = BiasAttack(dtype="float64")(observation)
    assert psnr(reconstruction.images, truth.float()).item() >= 80


def test_bias_attack_batch_returns_one_mixture(cifar10):
    model = build_model("mlp4", seed=0)
    truth = cifar10.images[:2]
    observation = observe(model, truth, cifar10.labels[:2])
    reconstruction = BiasAttack()(observation)
    assert reconstruction.notes["mixture"] is True
    assert torch.equal(reconstruction.images[0], reconstruction.images[1])
    scores = psnr(reconstruction.images, truth)
    assert scores.max() < 30  # neither image is recovered
    # ... but the result is an affine mixture sum_b w_b x_b with sum_b w_b = 1.
    mixture = invert_linear_layer(
        observation.gradients["fc1.weight"], observation.gradients["fc1.bias"]
    )
    basis = torch.cat([truth.double().flatten(1).T, torch.ones(1, 2, dtype=torch.float64)])
    weights = torch.linalg.lstsq(basis, torch.cat([mixture, mixture.new_ones(1)])).solution
    assert (basis @ weights - torch.cat([mixture, mixture.new_ones(1)])).abs().max() < 1e-5
    assert abs(weights.sum().item() - 1) < 1e-6


def test_bias_attack_needs_a_linear_first_layer(cifar10):
    observation = observe(build_model("lenet"), cifar10.images[:1], cifar10.labels[:1])
    with pytest.raises(GradleakError, match="first layer is fully connected with a bias"):
        BiasAttack()(observation)
    assert BiasAttack().check(observation) == [
        "'bias' needs a network whose first layer is fully connected with a bias; model 'lenet' "
        "starts with 'body.0' (Conv2d)"
    ]
    observation = observe(build_model("mlp4"), cifar10.images[:1], cifar10.labels[:1])
    assert BiasAttack().check(observation) == []
    with pytest.raises(GradleakError, match="closed-form: it takes no iterations"):
        BiasAttack()(observation, iterations=5)


# ---------------------------------------------------------------------- R-GAP
def test_rgap_is_exact_on_invertible_mlp(cifar10):
    model = build_model("mlp4", seed=0)  # sigmoid activations, biases
    for i in range(2):
        truth = cifar10.images[i : i + 1]
        observation = observe(model, truth, cifar10.labels[i : i + 1], knows_labels=False)
        reconstruction = RGAP()(observation)
        assert psnr(reconstruction.images, truth).item() >= 100
        assert reconstruction.labels.tolist() == cifar10.labels[i : i + 1].tolist()


@pytest.mark.slow
def test_rgap_recovers_real_images_on_cnn6(cifar10):
    """R-GAP's CNN6 at random init, labels hidden: 107.8-116.1 dB on the 20 images (benchmark)."""
    model = build_model("rgap_cnn", seed=0)
    for i in (0, 1):
        truth = cifar10.images[i : i + 1]
        observation = observe(model, truth, cifar10.labels[i : i + 1], knows_labels=False)
        reconstruction = RGAP()(observation)
        assert psnr(reconstruction.images, truth).item() >= 90
        assert reconstruction.labels.tolist() == cifar10.labels[i : i + 1].tolist()


def test_rgap_on_rank_deficient_layer_is_inexact(cifar10):
    model = _strided_net()
    truth = load_images("cifar10", size=8).images[:1]
    observation = observe(model, truth, torch.tensor([4]))
    image, label = rgap_invert(observation, model)
    assert label == 4
    assert psnr(image.float().clamp(0, 1)[None], truth).item() < 40


def test_rgap_rejects_unsupported_models(cifar10):
    image, label = cifar10.images[:1], cifar10.labels[:1]
    with pytest.raises(GradleakError, match="BatchNorm"):
        RGAP()(observe(build_model("convnet", width=4), image, label))
    with pytest.raises(GradleakError, match="batch of one"):
        RGAP()(observe(build_model("mlp4"), cifar10.images[:2], cifar10.labels[:2]))
    relu = _net(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with pytest.raises(GradleakError, match="ReLU is not invertible"):
        feedforward_layers(relu)
    pool = _net(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 10))
    with pytest.raises(GradleakError, match="max-pooling"):
        feedforward_layers(pool)


# ---------------------------------------------------------------------- rank analysis
def test_rank_of_fully_connected_layers():
    model = build_model("mlp4", width=8, image_size=4)  # 48 -> 8 -> 8 -> 8 -> 10, sigmoid
    one = layer_rank_analysis(model, 1)
    assert [r["name"] for r in one] == ["fc1", "fc2", "fc3", "fc4"]
    fc1 = one[0]
    assert (fc1["kind"], fc1["unknowns"], fc1["gradient_equations"]) == ("fc", 48, 8 * 48)
    assert (fc1["weight_equations"], fc1["equations"], fc1["rank"]) == (8, 8 * 48 + 8, 48)
    assert not any(r["rank_deficient"] for r in one)
    # B = 12: the gradient block Delta (x) I has rank min(8, 12) * 48; the 4 samples left
    # only get the 8 weight constraints each: rank = 8 * 48 + 4 * 8.
    twelve = layer_rank_analysis(model, 12)
    fc1 = twelve[0]
    assert (fc1["unknowns"], fc1["weight_equations"], fc1["rank"]) == (576, 96, 8 * 48 + 4 * 8)
    assert fc1["discarded"] == 576 - 416 and fc1["rank_deficient"]
    # Output layer: softmax deltas sum to zero, so rank Delta <= 9 classes - 1.
    assert twelve[-1]["rank"] == 9 * 8 and twelve[-1]["weight_equations"] == 0


def test_rank_deficient_strided_conv(cifar10):
    rows = layer_rank_analysis(_strided_net(), 1)
    conv = rows[0]
    assert (conv["kind"], conv["unknowns"]) == ("conv", 192)
    assert (conv["gradient_equations"], conv["weight_equations"]) == (108, 64)
    assert conv["rank"] <= conv["equations"] < conv["unknowns"]
    assert conv["rank_deficient"] and conv["discarded"] >= 20 and conv["method"] == "exact"
    observation = observe(_strided_net(), torch.rand(1, 3, 8, 8), torch.tensor([1]))
    with pytest.raises(GradleakError, match="Observation or a model"):
        layer_rank_analysis(observation.gradients)


def test_rank_analysis_of_an_observation(cifar10):
    observation = observe(build_model("lenet"), cifar10.images[:1], cifar10.labels[:1])
    rows = layer_rank_analysis(observation)
    assert [r["kind"] for r in rows] == ["conv", "conv", "conv", "fc"]
    assert all({"name", "unknowns", "equations", "rank"} <= set(r) for r in rows)
    assert rows[0]["unknowns"] == 3072 and not any(r["rank_deficient"] for r in rows)
    # Networks with BatchNorm and pooling: every layer, gradient constraints only.
    rows = layer_rank_analysis(build_model("convnet", width=4), 1)
    assert len(rows) == 9 and all(r["weight_equations"] == 0 for r in rows)
    assert rows[0]["rank"] == 4 * 9 * 1 * 3 and "BatchNorm" in rows[0]["note"]
