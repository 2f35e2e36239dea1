"""The fishing server (Wen et al. 2022) and its attack: weights-only head change, the fished
class alone in the gradient, the attack on it."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import FishingAttack, get_attack
from gradleak.errors import GradleakError
from gradleak.gradient.structure import output_layer
from gradleak.malicious import modify_model, server_record
from gradleak.models import build_model
from gradleak.threat import load_observation, observe, save_observation

HEAD = ("linear.weight", "linear.bias")


@pytest.fixture(scope="module")
def resnet():
    """ResNet-20 with the shared CIFAR-10 weights."""
    try:
        return build_model("resnet20", weights="pretrained")
    except GradleakError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def batch(cifar10):
    """10 lossless CIFAR-10 test images, labels 3 8 8 6 6 1 6 3 1 0: class 0 is unique (the
    last image), and classified as confidently as the others (the first airplane, image 3,
    is the pretrained model's least confident image and dominates even the honest gradient)."""
    keep = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    return cifar10.images[keep], cifar10.labels[keep]


def _flat(gradients: dict, skip=()) -> torch.Tensor:
    return torch.cat([g.flatten() for name, g in gradients.items() if name not in skip])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_fishing_changes_weights_only_and_round_trips(tmp_path, bundled):
    model = build_model("lenet")
    fished = modify_model(model, "fishing:target=3", seed=2)
    assert fished.config["server"] == {"name": "fishing", "target": 3, "margin": 100.0, "seed": 2}
    assert "server" not in model.config
    before, after = model.net.state_dict(), fished.net.state_dict()
    assert {k: v.shape for k, v in before.items()} == {k: v.shape for k, v in after.items()}
    head, _ = output_layer(model)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == [f"{head}.bias", f"{head}.weight"]
    observation = observe(fished, bundled.images[:4], bundled.labels[:4])
    loaded = load_observation(save_observation(observation, tmp_path / "obs.safetensors"))
    assert server_record(loaded.model_config, "fishing")["target"] == 3
    rebuilt = loaded.build_model()
    assert all(torch.equal(v, rebuilt.net.state_dict()[k]) for k, v in after.items())
    assert all(torch.equal(g, loaded.gradients[k]) for k, g in observation.gradients.items())


@pytest.mark.parametrize(
    "spec", ["fishing:target=10", "fishing:target=-1", "fishing:margin=0", "fishing:depth=2"]
)
def test_fishing_rejects_bad_parameters(spec):
    with pytest.raises(GradleakError):
        modify_model(build_model("lenet"), spec)


def test_fishing_refuses_a_model_modified_twice():
    fished = modify_model(build_model("lenet"), "fishing:target=1")
    with pytest.raises(GradleakError, match="already carries"):
        modify_model(fished, "fishing:target=2")


def test_the_fished_gradient_is_the_target_image_alone(resnet, batch):
    images, labels = batch
    fished = modify_model(resnet, "fishing:target=0")
    shares = {}
    for name, model in (("honest", resnet), ("fished", fished)):
        together = observe(model, images, labels, bn_mode="eval").gradients
        alone = observe(model, images[9:], labels[9:], bn_mode="eval").gradients
        shares[name] = (
            _cosine(_flat(together, HEAD), _flat(alone, HEAD)),
            _cosine(_flat(together), _flat(alone)),
        )
    # measured: honest 0.08 (both); fished 1.0000 below the head, 0.973 over every parameter
    assert shares["fished"][0] > 0.999 and shares["fished"][1] > 0.9
    assert shares["honest"][0] < 0.3
    bias = observe(fished, images, labels, bn_mode="train").gradients["linear.bias"]
    counts = torch.bincount(labels, minlength=10).double()
    expected = 1 / 9 - counts / len(labels)
    expected[0] = -counts[0] / len(labels)
    assert torch.allclose(bias.double(), expected, atol=1e-6)


def test_the_attack_refuses_an_honest_server(bundled):
    observation = observe(build_model("lenet"), bundled.images[:2], bundled.labels[:2])
    assert FishingAttack().check(observation)
    with pytest.raises(GradleakError, match="the malicious server 'fishing' modified") as err:
        get_attack("fishing")(observation, iterations=1)
    assert "\n" not in str(err.value)


def test_the_attack_refuses_a_batch_without_the_fished_class(bundled):
    fished = modify_model(build_model("lenet"), "fishing:target=7")
    observation = observe(fished, bundled.images[:4], bundled.labels[:4])
    assert any("no image of the fished class 7" in p for p in FishingAttack().check(observation))


@pytest.mark.parametrize("setting", [{"labels": "joint"}, {"bn": 0.1, "bn_statistics": "exact"}])
def test_the_attack_rejects_settings_that_cannot_hold(setting):
    with pytest.raises(GradleakError):
        FishingAttack(**setting)


def test_a_short_attack_returns_the_batch(resnet, batch):
    images, labels = batch
    fished = modify_model(resnet, "fishing:target=0")
    observation = observe(fished, images, labels, knows_labels=False)
    result = get_attack("fishing")(observation, iterations=2)
    assert result.images.shape == images.shape and result.iterations == 2
    assert torch.all(result.images[1:] == 0.5)
    assert result.labels[0] == 0 and sorted(result.labels.tolist()) == sorted(labels.tolist())
    assert result.notes["targeted_images"] == 1 and result.notes["fished_class"] == 0
    assert "running statistics" in result.notes["batchnorm"]
    assert all(frame.shape == images.shape for frame in result.frames)
    granted = observe(fished, images, labels, knows_bn_statistics=True)
    notes = get_attack("fishing")(granted, iterations=1).notes
    assert "the batch's BatchNorm statistics" in notes["batchnorm"]
