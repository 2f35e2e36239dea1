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
    result = get_attack("inverting_gradients", tv=0.3)(trained_observation, iterations=2)
    assert result.notes["recipe"] == {"trained network": {"init": "gray"}}
    assert (result.settings["init"], result.settings["tv"]) == ("gray", 0.3)
    assert result.settings["iterations"] == 2  # the call's budget is the caller's
    untouched = get_attack("inverting_gradients", recipe="as-set")(
        trained_observation, iterations=2
    )
    assert "recipe" not in untouched.notes and untouched.settings["init"] == "randn"


def test_gradinversion_recipe_runs_one_restart_and_says_group_is_off(trained_observation):
    result = get_attack("gradinversion")(trained_observation, iterations=2)
    assert result.settings["restarts"] == 1 and result.settings["init"] == "gray"
    assert "group" in result.notes["disabled"]


def test_untrained_network_keeps_the_defaults(cifar10):
    batch = cifar10.select(1)
    observation = observe(build_model("lenet"), batch.images, batch.labels)
    result = get_attack("inverting_gradients")(observation, iterations=2)
    assert "recipe" not in result.notes and result.settings["init"] == "randn"
    forced = get_attack("inverting_gradients", recipe="trained")(observation, iterations=2)
    assert forced.settings["init"] == "gray"


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
