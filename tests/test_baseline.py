"""The gray baseline: flat images scored like any reconstruction, labels from the gradient."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import GrayBaseline, get_attack
from gradleak.errors import GradleakError
from gradleak.metrics import psnr, score_batch
from gradleak.models import build_model
from gradleak.threat import observe


def test_gray_images_score_what_gray_scores_and_labels_leak_alone(cifar10):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    hidden = observe(build_model("lenet", seed=0), images, labels, knows_labels=False)
    floor = get_attack("gray")(hidden)
    assert torch.equal(floor.images, torch.full_like(images, 0.5)) and floor.iterations == 0
    score = score_batch(floor.images, images, floor.labels, labels)
    assert score.psnr.mean() == pytest.approx(float(psnr(floor.images, images).mean()))
    assert score.label_accuracy == 1.0  # labels 3, 8, 8, 0: read off the output layer, counts too
    iterated = get_attack("idlg")(
        observe(build_model("lenet"), images[:1], labels[:1]), iterations=5
    )
    assert psnr(iterated.images, images[:1]).mean() > psnr(floor.images[:1], images[:1]).mean()


def test_gray_level_is_checked():
    observation = observe(build_model("lenet"), torch.rand(1, 3, 32, 32), torch.tensor([3]))
    assert GrayBaseline(level=1.5).check(observation) == [
        "the gray level must lie in [0, 1], got 1.5"
    ]
    with pytest.raises(GradleakError, match="closed-form"):
        GrayBaseline()(observation, iterations=2)
