"""Batch label recovery and batch-size estimation on real images (MNIST, CIFAR-10)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch import nn

from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.gradient.batch_size import estimate_batch_size, gradient_ranks
from gradleak.gradient.labels import (
    METHODS,
    bias,
    idlg,
    ilrg,
    llg,
    recover_labels,
    round_counts,
    yin,
)
from gradleak.models import ImageClassifier, build_model
from gradleak.threat import observe


@pytest.fixture(scope="module")
def digits(shared_dir):
    """The first 300 MNIST test digits (labels repeat: 7 2 1 0 4 1 4 9 ...)."""
    return load_images("mnist", size=28, channels=1, n=300)


@pytest.fixture(scope="module")
def mlp(digits):
    return build_model("mlp4", in_channels=1, image_size=28, seed=0)


def _view(model, images, labels, *, knows_batch_size=True):
    """The attacker's view with labels hidden; the hidden batch size is falsified to prove that
    nothing reads it."""
    observation = observe(
        model, images, labels, knows_labels=False, knows_batch_size=knows_batch_size
    )
    view = observation.attacker_view()
    assert view.labels is None and view.truth is None
    return view if knows_batch_size else dataclasses.replace(view, batch_size=10_000)


def _counts(labels) -> dict[int, int]:
    return dict(Counter(torch.as_tensor(labels).tolist()))


# ---------------------------------------------------------------------- counts
@pytest.mark.parametrize("method", ["bias", "ilrg"])
@pytest.mark.parametrize("size", [8, 32])
def test_mnist_fc_counts_exact_with_repeated_labels(digits, mlp, method, size):
    batch = digits.subset(slice(0, size))
    assert max(_counts(batch.labels).values()) >= 2
    result = recover_labels(_view(mlp, batch.images, batch.labels), mlp, method=method)
    assert result.counts == _counts(batch.labels)
    assert result.labels.tolist() == sorted(batch.labels.tolist())
    assert result.method == method and result.batch_size == size


def test_mnist_relu_fc_counts_exact_at_64(digits):
    model = build_model(
        "fc_relu", in_channels=1, image_size=28, seed=1, mean=(0.1307,), std=(0.3081,)
    )
    batch = digits.subset(slice(100, 164))
    result = bias(_view(model, batch.images, batch.labels), model)
    assert result.counts == _counts(batch.labels)


def test_cifar_lenet_counts_exact_with_repeated_labels(cifar10):
    model = build_model("lenet", seed=0)
    for batch in (cifar10.subset(slice(0, 8)), cifar10):  # labels 3 8 8 0 6 6 1 6; all 20
        result = recover_labels(_view(model, batch.images, batch.labels), model)
        assert result.method == "bias"
        assert result.counts == _counts(batch.labels)


def test_auxiliary_images_give_exact_counts(digits, mlp):
    batch, auxiliary = digits.subset(slice(0, 64)), digits.subset(slice(64, 300))
    view = _view(mlp, batch.images, batch.labels)
    with_labels = bias(
        view, mlp, auxiliary_images=auxiliary.images, auxiliary_labels=auxiliary.labels
    )
    without = bias(view, mlp, auxiliary_images=auxiliary.images)
    assert with_labels.counts == without.counts == _counts(batch.labels)
    assert with_labels.details["auxiliary_classes"] == 10


# ---------------------------------------------------------------------- distinct labels
def test_yin_exact_on_distinct_labels(digits, mlp, cifar10):
    lenet = build_model("lenet", seed=0)
    for model, batch in (
        (mlp, digits.select(8, distinct_labels=True)),
        (lenet, cifar10.select(5, distinct_labels=True)),
    ):
        view = _view(model, batch.images, batch.labels)
        assert yin(view, model).labels.tolist() == sorted(batch.labels.tolist())
        heuristic = llg(view, model)  # LLG's counts are approximate: only its shape is checked
        assert len(heuristic.labels) == len(batch) and heuristic.details["impression"] < 0


def test_idlg_single_image(digits, mlp):
    batch = digits.subset(slice(3, 4))
    result = recover_labels(_view(mlp, batch.images, batch.labels, knows_batch_size=False), mlp)
    assert result.method == "idlg" and result.labels.tolist() == batch.labels.tolist()
    assert result.details["batch_size_source"] == "estimated (rank)"


def test_yin_gives_distinct_labels_only(digits, mlp):
    batch = digits.subset(slice(0, 16))
    result = yin(_view(mlp, batch.images, batch.labels), mlp)
    assert len(result.labels) == 10 and len(result.counts) == 10


# ---------------------------------------------------------------------- batch size
@pytest.mark.parametrize("size", [1, 3, 8])
def test_batch_size_from_first_layer_rank(digits, mlp, size):
    batch = digits.subset(slice(10, 10 + size))
    view = _view(mlp, batch.images, batch.labels, knows_batch_size=False)
    estimate, details = estimate_batch_size(view, mlp, return_details=True)
    assert estimate == size and details["exact"] and details["method"] == "rank"
    first = next(layer for layer in details["layers"] if layer["name"] == "fc1")
    assert first["rank"] == size and first["margin"][0] > 100 > first["margin"][1]


def test_hidden_batch_size_is_estimated_for_recovery(digits, mlp):
    batch = digits.subset(slice(0, 8))
    view = _view(mlp, batch.images, batch.labels, knows_batch_size=False)
    result = recover_labels(view, mlp)
    assert result.batch_size == 8 and result.counts == _counts(batch.labels)
    assert result.details["batch_size_exact"] is True


def test_lenet_batch_size_from_output_rank_then_lower_bound(cifar10):
    model = build_model("lenet", seed=0)
    small = cifar10.subset(slice(0, 3))
    view = _view(model, small.images, small.labels, knows_batch_size=False)
    estimate, details = estimate_batch_size(view, model, return_details=True)
    assert estimate == 3 and details["method"] == "rank" and not details["exact"]
    view = _view(model, cifar10.images, cifar10.labels, knows_batch_size=False)
    ranks = gradient_ranks(view, model)
    assert [(r["name"], r["output"]) for r in ranks] == [("fc", True)]
    assert ranks[0]["rank"] == ranks[0]["capacity"] <= 9  # saturated: 20 images
    guess, details = estimate_batch_size(view, model, return_details=True)
    assert details["method"] == "counts" and not details["exact"]
    assert guess >= details["lower_bound"] == ranks[0]["rank"]


# ---------------------------------------------------------------------- errors and helpers
def test_round_counts_sum_and_nearest():
    counts = round_counts(torch.tensor([2.6, -0.4, 1.45, 3.9, 0.45]), 8)
    assert counts.tolist() == [3, 0, 1, 4, 0]
    assert round_counts(torch.tensor([0.2, 0.2, 0.2]), 2).sum() == 2


def test_clear_errors(digits, mlp):
    batch = digits.subset(slice(0, 8))
    hidden = _view(mlp, batch.images, batch.labels, knows_batch_size=False)
    for method in (ilrg, bias, yin, llg, idlg):
        with pytest.raises(GradleakError, match="needs the batch size"):
            method(hidden, mlp)
    known = _view(mlp, batch.images, batch.labels)
    with pytest.raises(GradleakError, match="batch of one"):
        idlg(known, mlp)
    with pytest.raises(GradleakError, match="contradicts"):
        ilrg(known, mlp, batch_size=4)
    with pytest.raises(GradleakError, match="positive integer"):
        recover_labels(hidden, mlp, batch_size=0)
    with pytest.raises(GradleakError, match="unknown label recovery method"):
        recover_labels(known, mlp, method="dlg")
    with pytest.raises(GradleakError, match="without auxiliary_images"):
        bias(known, mlp, auxiliary_labels=batch.labels)
    with pytest.raises(GradleakError, match="do not fit the model"):
        bias(known, mlp, auxiliary_images=torch.rand(4, 3, 32, 32))
    with pytest.raises(GradleakError, match="unknown batch-size estimator"):
        estimate_batch_size(known, mlp, method="svd")
    other = build_model("mlp4", in_channels=1, image_size=28, width=32)
    with pytest.raises(GradleakError, match="shape"):
        bias(known, other)
    assert set(METHODS) == {"idlg", "yin", "llg", "ilrg", "bias"}


def _classifier(net: nn.Module) -> ImageClassifier:
    config = {
        "name": "custom",
        "num_classes": 10,
        "in_channels": 3,
        "image_size": 32,
        "mean": [0.0] * 3,
        "std": [1.0] * 3,
    }
    return ImageClassifier(net, config)


def test_models_without_fc_output_or_bias(cifar10):
    batch = cifar10.subset(slice(0, 4))
    conv_only = _classifier(nn.Sequential(nn.Conv2d(3, 10, 32), nn.Flatten()))
    view = _view(conv_only, batch.images, batch.labels, knows_batch_size=False)
    with pytest.raises(GradleakError, match="no fully-connected output layer"):
        recover_labels(view, conv_only, batch_size=4)
    with pytest.raises(GradleakError, match="no fully connected layer"):
        estimate_batch_size(view, conv_only)
    no_bias = _classifier(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10, bias=False)))
    view = _view(no_bias, batch.images, batch.labels)
    with pytest.raises(GradleakError, match="bias"):
        ilrg(view, no_bias)
    assert len(yin(view, no_bias).labels) == 4
