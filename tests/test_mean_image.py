"""The mean-image baseline: the auxiliary images' mean, labels as the gray baseline's."""

from __future__ import annotations

import math

import pytest
import torch

from gradleak.attacks import MeanImageBaseline, get_attack
from gradleak.attacks.bn_statistics import TEST_HOLD_OUT
from gradleak.data import load_images
from gradleak.data.auxiliary import SHARED_CIFAR10_JPEG, auxiliary_images
from gradleak.errors import GradleakError
from gradleak.metrics import psnr
from gradleak.models import build_model
from gradleak.threat import observe


def test_images_are_the_auxiliary_mean_and_score_a_finite_psnr(cifar10):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    hidden = observe(build_model("lenet", seed=0), images, labels, knows_labels=False)
    reference = get_attack("mean_image")(hidden)
    pool = auxiliary_images("cifar10:aux", size=32, channels=3)
    held_out = TEST_HOLD_OUT if SHARED_CIFAR10_JPEG in str(pool.source) else 0
    expected = pool.images[held_out:].double().mean(0).float()
    assert reference.images.shape == images.shape and reference.iterations == 0
    assert torch.allclose(reference.images, expected.expand_as(images), atol=1e-6)
    assert f"the mean of {len(pool) - held_out} images" in reference.notes["auxiliary"]
    scores = psnr(reference.images, images)
    assert all(math.isfinite(float(s)) for s in scores)
    gray = get_attack("gray")(hidden)
    assert torch.equal(reference.labels, gray.labels)  # the same label logic


def test_auxiliary_setting_resized_to_the_model(shared_dir):
    spec = str(shared_dir / "cifar10" / "test_jpeg_q75_100.npz")
    model = build_model("lenet", in_channels=1, image_size=28)
    observation = observe(model, torch.rand(2, 1, 28, 28), torch.tensor([1, 2]))
    reference = MeanImageBaseline(auxiliary=spec)(observation)
    pool = load_images(spec, size=28, channels=1).images
    assert reference.images.shape == (2, 1, 28, 28)
    assert torch.allclose(reference.images[0], pool.double().mean(0).float(), atol=1e-6)
    assert torch.equal(reference.labels, torch.tensor([1, 2]))


def test_missing_auxiliary_data_is_named():
    observation = observe(build_model("lenet"), torch.rand(1, 3, 32, 32), torch.tensor([3]))
    problems = MeanImageBaseline(auxiliary="/no/such/images.npz").check(observation)
    assert len(problems) == 1 and "images.npz" in problems[0]
    with pytest.raises(GradleakError, match="closed-form"):
        MeanImageBaseline()(observation, iterations=2)
