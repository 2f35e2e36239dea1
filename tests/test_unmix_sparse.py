"""FCUnmix behind ReLU: the sparse directions of the first layer's gradient (after SPEAR)."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks.fc_unmix import FCUnmix, fc_subspace, resolve_method
from gradleak.attacks.unmix_sparse import sparse_unmix
from gradleak.errors import GradleakError
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.threat import observe


def _one_class(images, label: int, count: int):
    index = torch.nonzero(images.labels == label).flatten()[:count]
    return images.images[index], images.labels[index]


def _hidden(model, images, labels):
    return observe(model, images, labels, knows_labels=False, knows_batch_size=False)


def test_fc_relu_one_class_labels_and_batch_size_hidden(jpeg100):
    """8 images of one class; measured 160.2 dB mean (min 156.1): exact up to float32 noise."""
    images, labels = _one_class(jpeg100, 6, 8)
    obs = _hidden(build_model("fc_relu", image_size=32, seed=0), images, labels)
    rec = FCUnmix()(obs, seed=0)
    score = score_batch(rec.images, images, rec.labels, labels)
    assert len(rec.images) == 8 and rec.labels.tolist() == labels.tolist()
    assert float(score.psnr.min()) >= 80.0, score.psnr
    assert rec.settings["method"] == "auto" and rec.notes["sparse"]["missing"] == 0
    assert rec.gradient_distance < 1e-8


@pytest.mark.parametrize("knows_labels", [False, True])
def test_mlp4_relu_mixed_classes_pairs_labels_with_images(jpeg100, knows_labels):
    """8 images of 8 classes: each image gets its own label back, read from its unmixed gradient
    (hidden labels) or the known ones assigned to it (the gradient of the reconstruction matches
    only then). Measured 165.3 dB mean (min 160.6)."""
    images, labels = jpeg100.images[3::10][:8], jpeg100.labels[3::10][:8]
    model = build_model("mlp4_relu", image_size=32, seed=1)
    obs = observe(model, images, labels, knows_labels=knows_labels, knows_batch_size=False)
    rec = FCUnmix()(obs, seed=0)
    score = score_batch(rec.images, images)
    assert float(score.psnr.min()) >= 80.0, score.psnr
    assert rec.labels[score.order].tolist() == labels.tolist()
    assert rec.gradient_distance < 1e-8


def test_spear_sampling_and_completion_without_a_next_linear_layer(jpeg100):
    """No span of ReLU outputs to descend on: SPEAR's random rows find the directions (the last
    one or two by completion) and the inputs come back exactly."""
    images, labels = _one_class(jpeg100, 2, 5)
    model = build_model("fc_relu", image_size=32, seed=2)
    obs = observe(model, images, labels)
    space = fc_subspace(obs.attacker_view(), model, 5)
    U, S, _ = torch.linalg.svd(space.gradient, full_matrices=False)
    weight, bias = model.net.fc1.weight.detach().double(), model.net.fc1.bias.detach().double()
    M = weight @ space.basis[:-1] + bias[:, None] * space.basis[-1][None]
    result = sparse_unmix(
        U[:, :5], S[:5], space.basis[-1], M, None, generator=torch.Generator().manual_seed(0)
    )
    assert result.descended == 0 and result.sampled >= 3 and result.missing == 0
    assert 0 < result.draws <= 100_000
    inputs = (result.coefficients @ space.basis[:-1].T).float()
    truth = ((images - model.mean) / model.std).flatten(1)
    distance = torch.cdist(inputs, truth).min(0).values / truth.norm(dim=1)
    assert float(distance.max()) < 1e-4


def test_too_small_a_search_says_so(jpeg100):
    """With the descent off and one random draw, nothing is found: the notes say so."""
    images, labels = _one_class(jpeg100, 0, 6)
    obs = observe(build_model("fc_relu", image_size=32, seed=0), images, labels)
    rec = FCUnmix(starts=0, draws=1)(obs, seed=0)
    assert rec.notes["sparse"]["missing"] == 6 and "not found" in rec.notes["sparse"]["warning"]


def test_sparse_needs_relu_after_the_first_layer(jpeg100):
    images, labels = _one_class(jpeg100, 1, 4)
    model = build_model("mlp4", width=32, image_size=32, seed=0)
    obs = observe(model, images, labels)
    assert resolve_method("auto", model, 1) == "exact"
    assert resolve_method("auto", build_model("mlp4_relu", width=32, image_size=32), 1) == "sparse"
    with pytest.raises(GradleakError, match="needs a ReLU right after the first linear layer"):
        FCUnmix(method="sparse")(obs)
