"""What a defense costs in accuracy: gradleak.experiments.utility, LeNet on auxiliary CIFAR-10."""

from __future__ import annotations

import json

import pytest

from gradleak.data.auxiliary import check_disjoint
from gradleak.errors import GradleakError
from gradleak.experiments import utility
from gradleak.experiments.utility import (
    UtilityBudget,
    UtilityStore,
    accounted,
    defense_accuracy,
    utility_key,
    utility_split,
)
from gradleak.models import build_model

# Measured on this budget: LeNet reaches 0.198 on the 500 held-out images without defense and
# 0.118 with noise sigma = 1 (chance: 0.10).
BUDGET = UtilityBudget(steps=300, batch_size=32, lr=0.05, optimizer="sgd", seed=0)
SHORT = UtilityBudget(steps=8, batch_size=16, lr=0.05, optimizer="sgd", seed=0)


@pytest.fixture(scope="module")
def data(shared_dir):
    return utility_split("cifar10", n_train=400, n_test=500, seed=0)


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet", num_classes=10, seed=0)


@pytest.fixture(scope="module")
def clean(data, lenet):
    return defense_accuracy(lenet, *data, [], BUDGET)


def test_the_split_never_holds_the_private_images(data, cifar10):
    train, test = data
    assert (len(train), len(test)) == (400, 500)
    assert not set(train.ids) & set(test.ids)
    check_disjoint(train.images, cifar10)
    check_disjoint(test.images, cifar10)
    assert len(set(train.labels.tolist())) == 10  # not one class of a class-sorted file


def test_lenet_learns_well_above_chance_without_defense(clean, lenet):
    assert clean["undefended"] and clean["steps"] == BUDGET.steps
    assert clean["accuracy"] > 0.15  # chance: 0.10 (+-0.013 on 500 images)
    assert clean["nonfinite_steps"] == 0 and clean["facts"] == [] and clean["epsilon"] is None
    assert lenet.net.fc.weight.grad is None  # the model given is left untouched


def test_heavy_noise_costs_accuracy(clean, data, lenet):
    noisy = defense_accuracy(lenet, *data, [("noise", {"sigma": 1.0})], BUDGET)
    assert not noisy["undefended"]
    assert noisy["defenses"] == [["noise", {"sigma": 1.0}]]
    assert noisy["accuracy"] < clean["accuracy"] - 0.04


def test_training_is_seeded(data, lenet):
    defenses = [("noise", {"sigma": 0.1})]
    first = defense_accuracy(lenet, *data, defenses, SHORT)
    again = defense_accuracy(lenet, *data, defenses, SHORT)
    other = defense_accuracy(lenet, *data, defenses, UtilityBudget(**{**vars(SHORT), "seed": 1}))
    assert (first["accuracy"], first["loss"]) == (again["accuracy"], again["loss"])
    assert first["loss"] != other["loss"]


def test_dp_accounting_is_filled_from_the_training():
    budget = UtilityBudget(steps=300, batch_size=32)
    dp = {"max_grad_norm": 1.0, "noise_multiplier": 1.0}
    ((name, params),) = accounted([("dp", dp)], budget, 400)
    assert name == "dp" and params["sample_rate"] == 32 / 400 and params["steps"] == 300
    given = accounted(
        [("dp", {"max_grad_norm": 1.0, "dataset_size": 800, "steps": 5})], budget, 400
    )
    assert given[0][1] == {"max_grad_norm": 1.0, "dataset_size": 800, "steps": 5}
    assert accounted([("noise", {"sigma": 0.1})], budget, 400) == [("noise", {"sigma": 0.1})]


def test_dp_epsilon_is_that_of_the_whole_training(data, lenet):
    pytest.importorskip("opacus")
    from gradleak.defenses.dp import dp_epsilon

    dp = [("dp", {"max_grad_norm": 1.0, "noise_multiplier": 1.0})]
    result = defense_accuracy(lenet, *data, dp, SHORT)
    assert result["epsilon"] == pytest.approx(dp_epsilon(1.0, 16 / 400, 8, 1e-5))
    assert result["facts"][0]["steps"] == SHORT.steps


def test_the_store_resumes_without_training_again(tmp_path, data, lenet, monkeypatch):
    path = tmp_path / "utility.json"
    defenses = [("prune", {"keep": 0.5})]
    first = UtilityStore(path).accuracy(lenet, *data, defenses, SHORT)
    assert first["stored"] is False and first["versions"]["torch"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr(utility, "defense_accuracy", no_training)
    again = UtilityStore(path).accuracy(lenet, *data, defenses, SHORT)
    assert again["stored"] is True and again["accuracy"] == first["accuracy"]
    saved = json.loads(path.read_text())
    assert saved["format"] == utility.FORMAT and list(saved["records"]) == [first["key"]]
    with pytest.raises(AssertionError, match="trained again"):  # another setting: trained
        UtilityStore(path).accuracy(lenet, *data, [("prune", {"keep": 0.3})], SHORT)


def test_the_key_tells_settings_apart(data, lenet):
    key = utility_key(lenet, *data, [], SHORT)
    assert key == utility_key(lenet, *data, [], SHORT)
    assert key != utility_key(lenet, *data, [("noise", {"sigma": 0.1})], SHORT)
    assert key != utility_key(lenet, *data, [], UtilityBudget(**{**vars(SHORT), "lr": 0.01}))
    assert key != utility_key(build_model("lenet", num_classes=10, seed=1), *data, [], SHORT)
    train, test = data
    assert key != utility_key(lenet, train.subset(slice(0, 399)), test, [], SHORT)


def test_bad_input_is_refused(data, lenet, tmp_path):
    train, test = data
    with pytest.raises(GradleakError, match="test set is empty"):
        defense_accuracy(lenet, train, test.subset(slice(0, 0)), [], SHORT)
    with pytest.raises(GradleakError, match="unknown defense 'nois'"):
        defense_accuracy(lenet, train, test, [("nois", {"sigma": 1.0})], SHORT)
    with pytest.raises(GradleakError, match="has no parameter 'sigmaa'"):
        defense_accuracy(lenet, train, test, [("noise", {"sigmaa": 1.0})], SHORT)
    with pytest.raises(GradleakError, match="unknown optimizer 'adam'"):
        defense_accuracy(lenet, train, test, [], UtilityBudget(optimizer="adam"))
    with pytest.raises(GradleakError, match="at least 1 step"):
        UtilityBudget(steps=0).check()
    with pytest.raises(GradleakError, match="exceeds the 5 training images"):
        defense_accuracy(lenet, train.subset(slice(0, 5)), test, [], SHORT)
    with pytest.raises(GradleakError, match="do not fit model 'lenet'"):
        small = build_model("lenet", num_classes=10, image_size=16, seed=0)
        defense_accuracy(small, train, test, [], SHORT)
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(GradleakError, match="not a gradleak utility store"):
        UtilityStore(tmp_path / "bad.json")
