"""Tests for gradleak.metrics: PSNR/SSIM on real images, optimal matching, label accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from gradleak.data import load_images, shared_data_dir
from gradleak.metrics import label_accuracy, match_images, mse, psnr, score_batch, ssim

SHARED = shared_data_dir(required=False)


def signed_noise(shape, amplitude: float, seed: int = 0) -> torch.Tensor:
    """+-amplitude at every pixel: the squared error is exactly amplitude**2 everywhere."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    return amplitude * signs


# ---------------------------------------------------------------------- PSNR
def test_psnr_of_identical_images_is_the_cap(bundled):
    values = psnr(bundled.images, bundled.images.clone())
    assert values.shape == (len(bundled),)
    assert torch.all(values == 200.0)
    assert torch.all(psnr(bundled.images, bundled.images, max_db=80.0) == 80.0)
    assert torch.all(mse(bundled.images, bundled.images) == 0)


def test_psnr_of_known_noise_matches_formula(cifar10):
    truth = cifar10.images[:10].double()
    amplitudes = torch.linspace(0.01, 0.2, len(truth), dtype=torch.float64)
    noise = torch.stack(
        [signed_noise(truth.shape[1:], float(a), seed=i) for i, a in enumerate(amplitudes)]
    ).double()
    reconstruction = (truth + noise).float()  # not clamped: the error is exactly the noise
    truth = truth.float()

    errors = (reconstruction.double() - truth.double()).pow(2).flatten(1).mean(1)
    expected = 10 * torch.log10(1.0 / errors)
    got = psnr(reconstruction, truth)

    torch.testing.assert_close(mse(reconstruction, truth), errors, rtol=1e-12, atol=0)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-4)
    # +-a noise has mse a^2, i.e. PSNR -20 log10(a): 40 dB at a = 0.01, ~14 dB at a = 0.2
    torch.testing.assert_close(got.double(), -20 * torch.log10(amplitudes), rtol=0, atol=1e-3)
    assert torch.all(got[1:] < got[:-1])  # more noise, lower PSNR


def test_psnr_rejects_mismatched_shapes(bundled):
    with pytest.raises(ValueError, match="differs from truth shape"):
        psnr(bundled.images[:2], bundled.images[:3])


# ---------------------------------------------------------------------- SSIM
def test_ssim_of_identical_images_is_one(cifar10):
    values = ssim(cifar10.images, cifar10.images.clone())
    assert values.shape == (len(cifar10),)
    torch.testing.assert_close(values, torch.ones(len(cifar10)), rtol=0, atol=1e-6)


def test_ssim_drops_with_noise(cifar10):
    truth = cifar10.images[:6]
    scores = [
        ssim((truth + signed_noise(truth.shape, a, seed=1)).clamp(0, 1), truth)
        for a in (0.02, 0.1, 0.3)
    ]
    for weaker, stronger in zip(scores, scores[1:], strict=False):
        assert torch.all(stronger < weaker)
    assert torch.all(scores[0] < 0.999)
    assert torch.all(scores[-1] < 0.6)
    # an unrelated image scores far below a lightly noised copy
    other = ssim(cifar10.images[6:12], truth)
    assert torch.all(other < scores[0])


def test_ssim_handles_images_smaller_than_the_window(bundled):
    small = load_images("bundled", size=8, n=3)
    torch.testing.assert_close(ssim(small.images, small.images), torch.ones(3), atol=1e-6, rtol=0)
    noisy = (small.images + signed_noise(small.images.shape, 0.2)).clamp(0, 1)
    assert torch.all(ssim(noisy, small.images) < 0.95)


# ---------------------------------------------------------------------- matching and labels
def test_match_images_recovers_a_permutation_of_real_images(cifar10):
    truth = cifar10.images
    perm = torch.randperm(len(truth), generator=torch.Generator().manual_seed(3))
    assert not torch.equal(perm, torch.arange(len(truth)))
    reconstruction = truth[perm]

    order = match_images(reconstruction, truth)

    assert torch.equal(order, torch.argsort(perm))
    assert torch.equal(reconstruction[order], truth)
    # still found when every reconstruction is noisy
    noisy = (reconstruction + signed_noise(reconstruction.shape, 0.05, seed=4)).clamp(0, 1)
    assert torch.equal(match_images(noisy, truth), torch.argsort(perm))
    assert torch.equal(match_images(truth, truth), torch.arange(len(truth)))


def test_match_images_rejects_a_size_mismatch(bundled):
    with pytest.raises(ValueError, match="7 reconstructed images for 8 true images"):
        match_images(bundled.images[:7], bundled.images)


@pytest.mark.parametrize(
    ("predicted", "truth", "expected"),
    [
        ([1, 1, 2], [1, 2, 2], 2 / 3),
        ([1, 2, 2], [1, 1, 2], 2 / 3),
        ([2, 1, 3], [1, 2, 3], 1.0),  # order-free
        ([3, 3], [3, 5], 0.5),
        ([4, 4, 4], [4, 4, 4], 1.0),
        ([0, 1], [2, 3], 0.0),
    ],
)
def test_label_accuracy_counts_a_multiset(predicted, truth, expected):
    assert label_accuracy(torch.tensor(predicted), torch.tensor(truth)) == pytest.approx(expected)
    assert label_accuracy(predicted, truth) == pytest.approx(expected)


def test_score_batch_on_a_permuted_batch_is_perfect(cifar10):
    truth, labels = cifar10.images[:12], cifar10.labels[:12]
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))

    score = score_batch(truth[perm], truth, labels[perm], labels)

    assert torch.equal(score.order, torch.argsort(perm))
    assert torch.all(score.mse == 0)
    assert torch.all(score.psnr == 200.0)
    torch.testing.assert_close(score.ssim, torch.ones(12), atol=1e-6, rtol=0)
    assert score.label_accuracy == 1.0
    summary = score.summary()
    assert summary["psnr"] == pytest.approx(200.0)
    assert summary["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert summary["mse"] == 0
    assert summary["label_accuracy"] == 1.0
    assert len(summary["psnr_per_image"]) == len(summary["ssim_per_image"]) == 12


def test_score_batch_scores_each_truth_against_its_match(cifar10):
    truth, labels = cifar10.images[:6], cifar10.labels[:6]
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    noise = torch.stack([signed_noise(truth.shape[1:], 0.01 * (i + 1), seed=i) for i in range(6)])
    noisy = truth + noise  # truth i gets amplitude 0.01 * (i + 1)
    wrong_labels = labels.clone()
    wrong_labels[0] = (labels[0] + 1) % 10

    score = score_batch(noisy[perm], truth, wrong_labels[perm], labels)

    expected = torch.tensor([-20 * math.log10(0.01 * (i + 1)) for i in range(6)])
    torch.testing.assert_close(score.psnr, expected, rtol=0, atol=1e-3)
    assert score.label_accuracy == pytest.approx(5 / 6)
    assert score_batch(noisy, truth).label_accuracy is None
    assert "label_accuracy" not in score_batch(noisy, truth).summary()
