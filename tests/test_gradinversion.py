"""GradInversion's priors and the engine parts they need: BN statistics, registration, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradleak.attacks import GradInversion, get_attack
from gradleak.attacks.matching import MatchingSettings, _step_size_factor
from gradleak.attacks.priors import (
    GroupConsistency,
    batchnorm_distance,
    registration_shifts,
    shift_images,
)
from gradleak.errors import GradleakError
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import batchnorm_layers
from gradleak.models import build_model
from gradleak.threat import observe


@pytest.fixture(scope="module")
def resnet20():
    return build_model("resnet20", weights="pretrained")


def test_batch_statistics_are_the_features_entering_each_bn_layer(resnet20, cifar10):
    """The statistics traced inside vmap(grad(...)) equal a plain forward pass with hooks."""
    images = torch.stack([cifar10.images[:2], cifar10.images[2:4]])  # (R=2, B=2, C, H, W)
    labels = torch.stack([cifar10.labels[:2], cifar10.labels[2:4]])
    resnet20.train()
    seen = []
    hooks = [
        m.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
        for m in batchnorm_layers(resnet20)
    ]
    expected = []
    for r in range(2):
        seen.clear()
        with torch.no_grad():
            resnet20(images[r])
        expected.append([(f.mean((0, 2, 3)), f.var((0, 2, 3), unbiased=False)) for f in seen])
    for hook in hooks:
        hook.remove()
    for vectorize in (True, False):
        simulator = ClientSimulator(resnet20, vectorize=vectorize, batch_statistics=True)
        _, statistics = simulator.simulate(images, labels)
        assert len(statistics) == len(expected[0]) == 19
        for layer, (mean, var) in enumerate(statistics):
            for r in range(2):
                torch.testing.assert_close(mean[r], expected[r][layer][0], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(var[r], expected[r][layer][1], atol=1e-5, rtol=1e-4)


def test_batch_statistics_are_differentiable_in_the_images(resnet20, cifar10):
    simulator = ClientSimulator(resnet20, batch_statistics=True)
    images = cifar10.images[:4].reshape(2, 2, 3, 32, 32).clone().requires_grad_(True)
    _, statistics = simulator.simulate(images, cifar10.labels[:4].reshape(2, 2))
    loss = batchnorm_distance(statistics, simulator.running_statistics)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_batchnorm_distance_is_zero_at_the_running_statistics():
    running = [(torch.randn(4), torch.rand(4)), (torch.randn(8), torch.rand(8))]
    batched = [(m.expand(3, -1), v.expand(3, -1)) for m, v in running]
    assert torch.equal(batchnorm_distance(batched, running), torch.zeros(3))
    shifted = [(m + 1, v) for m, v in batched]
    torch.testing.assert_close(batchnorm_distance(shifted, running), torch.full((3,), 2 + 8**0.5))


def test_bn_prior_is_switched_off_and_recorded_on_a_model_without_batchnorm(cifar10):
    obs = observe(build_model("lenet", seed=0), cifar10.images[:1], cifar10.labels[:1])
    assert GradInversion().check(obs) == []
    result = GradInversion()(obs, iterations=2, restarts=2)
    assert result.settings["bn"] == 0 and result.settings["group"] == 0.01
    assert "no BatchNorm layers" in result.notes["disabled"]["bn"]
    single = GradInversion()(obs, iterations=2, restarts=1)
    assert set(single.notes["disabled"]) == {"bn", "group"}


def test_registration_recovers_translations(cifar10):
    reference = cifar10.images[:3]
    shifts = [((2, -3), (0, 1), (-1, 0)), ((1, 1), (-2, 2), (3, -1))]
    images = torch.stack(
        [
            torch.stack(
                [torch.roll(x, s, dims=(-2, -1)) for x, s in zip(reference, row, strict=True)]
            )
            for row in shifts
        ]
    )
    dy, dx = registration_shifts(images, reference, max_shift=4)
    assert dy.tolist() == [[s[0] for s in row] for row in shifts]
    assert dx.tolist() == [[s[1] for s in row] for row in shifts]
    assert torch.equal(shift_images(images, dy, dx), reference.expand(2, -1, -1, -1, -1))


def test_group_consistency_pulls_restarts_toward_their_registered_mean(cifar10):
    group = GroupConsistency()
    same = cifar10.images[:2].expand(3, -1, -1, -1, -1).clone()
    assert torch.equal(group(same), torch.zeros(3))  # nothing registered yet
    group.register(same)
    assert group(same).abs().max() < 1e-5
    noisy = same + 0.1 * torch.randn(same.shape, generator=torch.Generator().manual_seed(0))
    group.register(noisy)
    spread = group(noisy)
    assert spread.shape == (3,) and bool((spread > 0).all())
    # each restart is closer to the consensus than to another restart
    assert float(spread.max()) < float((noisy[0] - noisy[1]).flatten(1).norm(dim=1).mean())


@pytest.mark.parametrize(
    ("schedule", "warmup", "expected"),
    [
        ("constant", 0, [1, 1, 1, 1]),
        ("step", 0, [1, 0.1, 0.01, 0.001]),
        (
            "cosine",
            0,
            [
                1,
                0.5 * (1 + math.cos(math.pi * 0.375)),
                0.5 * (1 + math.cos(math.pi * 0.625)),
                0.5 * (1 + math.cos(math.pi * 0.875)),
            ],
        ),
        ("constant", 4, [0.25, 1, 1, 1]),
    ],
)
def test_step_size_schedules(schedule, warmup, expected):
    factor = _step_size_factor(MatchingSettings(iterations=8, schedule=schedule, warmup=warmup))
    assert [factor(s) for s in (0, 3, 5, 7)] == pytest.approx(expected)


def test_unknown_schedule_is_a_clear_error(cifar10):
    obs = observe(build_model("lenet", seed=0), cifar10.images[:1], cifar10.labels[:1])
    with pytest.raises(GradleakError, match="schedule"):
        get_attack("inverting_gradients", schedule="linear")(obs, iterations=1)


@pytest.mark.slow
def test_bn_prior_pulls_the_batch_statistics_toward_the_running_ones(resnet20, cifar10):
    """On a trained ResNet, reconstructions made with the BN prior carry BN statistics closer to
    the model's running statistics than those made without it."""
    resnet20.train()
    obs = observe(resnet20, cifar10.images[:2], cifar10.labels[:2])
    simulator = ClientSimulator(obs.build_model(), batch_statistics=True)

    def bn_distance(bn: float) -> float:
        rec = GradInversion(bn=bn, restarts=1, warmup=0)(obs, iterations=25, seed=0)
        with torch.no_grad():
            _, statistics = simulator.simulate(rec.images[None], rec.labels[None])
        return float(batchnorm_distance(statistics, simulator.running_statistics)[0])

    with_prior, without = bn_distance(0.1), bn_distance(0.0)
    assert with_prior < 0.8 * without, (with_prior, without)


@pytest.mark.slow
def test_priors_ablation_preset_runs_on_the_trained_resnet(tmp_path, cifar10):
    """Every variant of the preset runs on the trained ResNet (two real images, batch 1)."""
    from gradleak.experiments import RunOptions, get_preset, run_experiment

    pixels = (cifar10.images[:2] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "two.npz", images=pixels, labels=cifar10.labels[:2].numpy())
    preset = get_preset("priors-ablation")
    (model,) = preset.settings.models
    assert model.weights == "pretrained" and model.name.startswith("resnet")
    options = RunOptions(images=str(tmp_path / "two.npz"), iterations=2, restarts=2)
    results = run_experiment(preset, tmp_path / "run", options)
    assert {c["variant"] for c in results["cases"]} == {m.variant for m in preset.settings.methods}
    assert all(c["status"] == "done" and c["psnr"] is not None for c in results["cases"])
    assert all(c["settings"]["restarts"] == 2 for c in results["cases"])
    assert (tmp_path / "run" / "results.json").exists()
