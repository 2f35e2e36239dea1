"""Trained-network recipes (the ``recipe`` setting); the cosine distance's closed-form backward."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import get_attack
from gradleak.attacks.matching import is_trained
from gradleak.attacks.objectives import GradientDistance
from gradleak.errors import GradleakError
from gradleak.models import build_model
from gradleak.threat import observe


@pytest.fixture(scope="module")
def trained_observation(cifar10):
    model = build_model("resnet20", weights="pretrained")
    batch = cifar10.select(1)
    return observe(model, batch.images, batch.labels, bn_mode="eval")


def test_trained_means_moved_batchnorm_statistics():
    assert is_trained(build_model("resnet20", weights="pretrained"))
    assert not is_trained(build_model("resnet20"))
    assert not is_trained(build_model("lenet"))  # no BatchNorm: untrained unless told


def test_inverting_gradients_takes_the_trained_recipe_for_what_the_caller_left_unset(
    trained_observation,
):
    attack = get_attack("inverting_gradients", tv=0.3)
    planned = attack.planned_settings(trained_observation)
    assert (planned.iterations, planned.tv, planned.init) == (2400, 0.3, "randn")
    assert get_attack("gradinversion").planned_settings(trained_observation).iterations == 2400
    kept = get_attack("inverting_gradients", iterations=50).planned_settings(trained_observation)
    assert kept.iterations == 50  # set by the caller: left alone
    as_set = get_attack("inverting_gradients", recipe="as-set")
    assert as_set.planned_settings(trained_observation).iterations == 2000
    result = attack(trained_observation, iterations=2)  # the call's budget is the caller's too
    assert result.settings["iterations"] == 2 and "recipe" not in result.notes


def test_learned_keeps_the_inverters_images_and_gradinversion_its_priors(trained_observation):
    from gradleak.attacks.learned_inversion import LearnedInversion

    assert LearnedInversion.trained_recipe == {"refine": "none"}
    forced = get_attack("gradinversion", recipe="trained", restarts=1)
    planned = forced.planned_settings(trained_observation)
    assert planned.iterations == 2400 and planned.bn > 0 and planned.group == 0  # 1 restart


def test_untrained_network_keeps_the_defaults(cifar10):
    batch = cifar10.select(1)
    observation = observe(build_model("lenet"), batch.images, batch.labels)
    assert get_attack("inverting_gradients").planned_settings(observation).iterations == 2000
    forced = get_attack("inverting_gradients", recipe="trained")
    assert forced.planned_settings(observation).iterations == 2400


def test_unknown_recipe_is_refused(trained_observation):
    with pytest.raises(GradleakError, match="unknown recipe 'fast'"):
        get_attack("inverting_gradients", recipe="fast")(trained_observation, iterations=1)


@pytest.mark.parametrize("restarts", [1, 3])
def test_cosine_backward_in_closed_form_equals_autograd(restarts):
    generator = torch.Generator().manual_seed(0)
    target = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    candidate = [
        torch.randn(restarts, 4, 3, generator=generator, dtype=torch.float64).requires_grad_(),
        torch.randn(restarts, 5, generator=generator, dtype=torch.float64).requires_grad_(),
    ]
    target = [t.double() for t in target]
    for weights in (None, [0.5, 2.0]):
        fast = GradientDistance("cosine", target, weights)
        precise = GradientDistance("cosine", target, weights, precise=True)
        torch.testing.assert_close(fast(candidate), precise(candidate))
        ours = torch.autograd.grad((fast(candidate) * 1.7).sum(), candidate)
        reference = torch.autograd.grad((precise(candidate) * 1.7).sum(), candidate)
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b)
