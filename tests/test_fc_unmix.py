"""FCUnmix: batches with repeated labels recovered from the first fully-connected layer."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd

from gradleak.analysis import estimate_batch_size
from gradleak.attacks.fc_unmix import (
    FCUnmix,
    fc_subspace,
)
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.unmix_solve import FirstLayerEquation
from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.gradient.structure import image_layer
from gradleak.metrics import psnr, score_batch
from gradleak.models import build_model
from gradleak.threat import observe

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module")
def jpeg_all(shared_dir):
    """All 10,000 CIFAR-10 test images (JPEG copies), for one-class batches larger than 10."""
    return load_images(shared_dir / "cifar10" / "test_jpeg_q75.npz")


def _one_class(images, label: int, count: int, skip: int = 0):
    index = torch.nonzero(images.labels == label).flatten()[skip : skip + count]
    return images.images[index], images.labels[index]


def _mlp(width: int = 256, **kwargs):
    return build_model("mlp4", width=width, image_size=32, seed=0, **kwargs)


def test_repeated_label_batch_of_4_is_recovered(jpeg100):
    """Measured 118.4 dB (min 116.5): exact up to the float32 noise of the observed gradient."""
    obs = observe(_mlp(), *_one_class(jpeg100, 7, 4))
    rec = FCUnmix()(obs, seed=0)
    score = score_batch(rec.images, obs.truth.images, rec.labels, obs.truth.labels)
    assert float(score.psnr.mean()) >= 112.0, score.psnr
    assert float(score.psnr.min()) >= 110.0, score.psnr
    assert score.label_accuracy == 1.0


def test_repeated_label_batch_of_16_is_recovered(jpeg_all):
    """The target case: 16 images of one class, mlp4 width 256. Measured 101.3 dB (min 96.4)."""
    obs = observe(_mlp(), *_one_class(jpeg_all, 4, 16, skip=600))
    rec = FCUnmix()(obs, seed=0)
    score = score_batch(rec.images, obs.truth.images)
    assert float(score.psnr.mean()) >= 95.0, score.psnr
    assert float(score.psnr.min()) >= 90.0, score.psnr
    assert rec.gradient_distance < 1e-10


@pytest.mark.slow
def test_cpa_unmixing_beats_chance(jpeg100):
    """CPA's ICA alone (10 images of one class); measured 24.3 dB, mixtures score ~12 dB."""
    obs = observe(_mlp(), *_one_class(jpeg100, 7, 10))
    rec = FCUnmix(method="cpa")(obs, iterations=1000, seed=0)
    assert float(score_batch(rec.images, obs.truth.images).psnr.mean()) >= 21.0


def test_subspace_contains_the_batch(jpeg100):
    """[x_i | 1] lies in the top-B right singular subspace of [dL/dW1 | dL/db1] (CPA eq. 3)."""
    images, labels = _one_class(jpeg100, 1, 10)
    obs = observe(_mlp(), images, labels)
    space = fc_subspace(obs.attacker_view(), obs.build_model(), 10)
    rows = torch.cat([images.double().flatten(1), torch.ones(10, 1, dtype=torch.float64)], 1)
    projected = rows @ space.basis @ space.basis.T
    assert float(psnr(projected[:, :-1].reshape(images.shape).float(), images).min()) >= 110.0
    assert float((projected[:, -1] - 1).abs().max()) < 1e-5
    ratio = space.singular_values / space.singular_values[0]
    assert float(ratio[9]) > 1e-6 > 1e-7 > float(ratio[10])


def test_hidden_labels_and_batch_size(jpeg100):
    """Batch size from the gradient's rank, label from the output bias (all the same).
    Measured 118.6 dB (min 113.5)."""
    images, labels = _one_class(jpeg100, 3, 6, skip=2)
    obs = observe(_mlp(), images, labels, knows_labels=False, knows_batch_size=False)
    assert estimate_batch_size(obs.attacker_view()) == 6
    rec = FCUnmix()(obs, seed=1)
    assert rec.labels.tolist() == labels.tolist()
    assert float(score_batch(rec.images, images).psnr.min()) >= 107.0


@pytest.mark.parametrize("size", [1, 3, 9])
def test_estimate_batch_size_mixed_labels(jpeg100, size):
    obs = observe(_mlp(), jpeg100.images[::10][:size], jpeg100.labels[::10][:size])
    assert estimate_batch_size(obs) == size


def test_normalizing_model_and_distinct_labels(jpeg100):
    """The unmixing works in the network's input space; images come back in [0, 1].
    Measured 149.9 dB (min 146.4)."""
    images, labels = jpeg100.images[2::10][:8], jpeg100.labels[2::10][:8]
    obs = observe(_mlp(mean=CIFAR_MEAN, std=CIFAR_STD), images, labels)
    rec = FCUnmix()(obs, seed=0)
    assert rec.images.min() >= 0 and rec.images.max() <= 1
    assert float(score_batch(rec.images, images).psnr.min()) >= 140.0


def test_reconstruction_record(jpeg100):
    obs = observe(_mlp(), *_one_class(jpeg100, 5, 4))
    seen = []
    rec = FCUnmix(restarts=2)(obs, iterations=8, seed=0, callback=lambda *a: seen.append(a))
    assert rec.images.shape == (4, 3, 32, 32) and rec.labels.dtype == torch.int64
    assert rec.settings["attack"] == "fc_unmix" and rec.settings["restarts"] == 2
    assert len(rec.restart_distances) == 2 and rec.frames and rec.iterations <= 16
    assert all(b <= a for a, b in zip(rec.history, rec.history[1:], strict=False))
    assert seen and seen[-1][1] == 16
    plain = FCUnmix()(obs, iterations=2, seed=0)
    polished = FCUnmix(refine_iterations=3)(obs, iterations=2, seed=0)
    assert polished.gradient_distance <= plain.gradient_distance
    assert polished.images.min() >= 0 and polished.images.max() <= 1


def test_normal_equations_match_dense_jacobian(jpeg100):
    """J^T J and J^T r in closed form equal those of the autograd Jacobian (B = 3)."""
    obs = observe(_mlp(width=32), *_one_class(jpeg100, 0, 3))
    view, model = obs.attacker_view(), obs.build_model()
    space = fc_subspace(view, model, 3)
    rest = torch.nn.Sequential(*list(model.net.children())[2:]).double().requires_grad_(False)
    equation = FirstLayerEquation(
        rest,
        model.net.fc1.weight.detach().double() @ space.basis[:-1],
        model.net.fc1.bias.detach().double(),
        space.gradient @ space.basis,
        space.basis[-1],
        batch_labels(view, model, 3),
        bias_weight=0.7,
    )
    coefficients = torch.randn(
        3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    def residual(flat):
        R, rb = equation.residuals(flat.view(3, 3))
        return torch.cat([R.reshape(-1), rb])

    J = jacfwd(residual)(coefficients.reshape(-1))
    r = residual(coefficients.reshape(-1))
    H, g, cost = equation.normal_equations(coefficients)
    torch.testing.assert_close(H, J.T @ J, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g, J.T @ r, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(cost, r.pow(2).sum())


def test_needs_a_first_fully_connected_layer(jpeg100):
    lenet = build_model("lenet", seed=0)
    obs = observe(lenet, jpeg100.images[:2], jpeg100.labels[:2])
    with pytest.raises(GradleakError, match="first layer is fully connected with a bias"):
        FCUnmix()(obs)
    assert any("first layer is fully connected" in p for p in FCUnmix().check(obs))
    with pytest.raises(GradleakError, match="first layer is fully connected"):
        image_layer(build_model("convnet", width=4))


def test_first_layer_narrower_than_batch(jpeg100):
    obs = observe(_mlp(width=8), *_one_class(jpeg100, 2, 10))
    with pytest.raises(GradleakError, match="fewer than the batch size 10"):
        FCUnmix()(obs)


def test_unknown_method(jpeg100):
    obs = observe(_mlp(), *_one_class(jpeg100, 2, 2))
    with pytest.raises(GradleakError, match="unknown method"):
        FCUnmix(method="fastica")(obs)
    with pytest.raises(GradleakError, match="no setting"):
        FCUnmix(unmixing="ica")
