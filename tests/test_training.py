"""The attacker's training infrastructure, auxiliary data, defenses and FedAvg drift."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from gradleak.data.auxiliary import auxiliary_images, check_disjoint, near_duplicates
from gradleak.defenses import add_noise, apply_defense, clip, prune
from gradleak.errors import GradleakError
from gradleak.learning import card_path, load_artifact, read_card, save_artifact, train
from gradleak.models import build_model
from gradleak.models.weights import weight_drift
from gradleak.threat import observe
from gradleak.threat.fedavg import fedavg_rounds


def _regression(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)


_X = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))


def _run(net, optimizer, steps, **kwargs):
    def step(index, generator):
        pick = torch.randint(0, len(_X), (16,), generator=generator)
        loss = (net(_X[pick]).squeeze(1) - _X[pick].sum(1)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    return train(step, modules={"net": net}, optimizers={"adam": optimizer}, steps=steps, **kwargs)


def test_training_resumed_after_a_kill_ends_bit_identical(tmp_path):
    net, optimizer = _regression()
    log = _run(net, optimizer, 40, seed=3, config={"lr": 1e-2})
    uninterrupted = [p.detach().clone() for p in net.parameters()]
    assert log[-1]["loss"] < log[0]["loss"]
    checkpoint = tmp_path / "run.ckpt.safetensors"
    net, optimizer = _regression()
    _run(net, optimizer, 15, seed=3, config={"lr": 1e-2}, checkpoint=checkpoint, every=5)
    net, optimizer = _regression()  # a fresh process: state comes from the checkpoint only
    log = _run(net, optimizer, 40, seed=3, config={"lr": 1e-2}, checkpoint=checkpoint, every=5)
    assert all(torch.equal(a, b) for a, b in zip(uninterrupted, net.parameters(), strict=True))
    assert log[-1]["step"] == 40


def test_checkpoint_of_another_run_is_refused(tmp_path):
    checkpoint = tmp_path / "run.ckpt.safetensors"
    net, optimizer = _regression()
    _run(net, optimizer, 5, seed=0, config={"lr": 1e-2}, checkpoint=checkpoint)
    with pytest.raises(GradleakError, match="another training run.*lr"):
        _run(net, optimizer, 10, seed=0, config={"lr": 1e-3}, checkpoint=checkpoint)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(GradleakError, match="not a valid safetensors"):
        _run(net, optimizer, 10, seed=0, config={"lr": 1e-2}, checkpoint=checkpoint)


def test_artifact_round_trip_with_card_and_kind_check(tmp_path):
    path = save_artifact(
        tmp_path / "a.safetensors", {"w": torch.arange(6.0)}, {"steps": 7}, kind="generator"
    )
    tensors, card = load_artifact(path, kind="generator")
    assert torch.equal(tensors["w"], torch.arange(6.0))
    assert card["steps"] == 7 and "torch" in card["versions"]
    assert json.loads(card_path(path).read_text())["steps"] == 7
    assert read_card(path)["kind"] == "generator"
    with pytest.raises(GradleakError, match="not a 'inverter'"):
        load_artifact(path, kind="inverter")
    with pytest.raises(GradleakError, match="end in .safetensors"):
        save_artifact(tmp_path / "a.pt", {}, {}, kind="generator")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    with pytest.raises(GradleakError, match="not a valid safetensors"):
        load_artifact(bad, kind="generator")


def test_near_copies_of_private_images_never_enter_auxiliary_data(cifar10):
    # The shared CIFAR-10 JPEG copies hold every private image (lossy): all must be found.
    auxiliary = auxiliary_images("cifar10:aux")
    found = near_duplicates(auxiliary.images, cifar10.images)
    assert int(found.sum()) == len(cifar10)
    with pytest.raises(GradleakError, match="copies of private images"):
        check_disjoint(auxiliary.images, cifar10)
    clean = auxiliary_images("cifar10:aux", exclude=cifar10, classes=[0, 1])
    check_disjoint(clean.images, cifar10)
    assert set(clean.labels.tolist()) == {0, 1}
    assert len(clean) == 2000 - int((cifar10.labels < 2).sum())
    with pytest.raises(GradleakError, match="no image of classes"):
        auxiliary_images("cifar10:aux", classes=[42])


@pytest.fixture(scope="module")
def observation(bundled):
    model = build_model("lenet", seed=0)
    return observe(model, bundled.images[:2], bundled.labels[:2])


def test_noise_is_seeded_and_recorded(observation):
    noisy = add_noise(observation, 0.01, seed=1)
    again = apply_defense(observation, "noise", sigma=0.01, seed=1)
    for name in observation.gradients:
        assert torch.equal(noisy.gradients[name], again.gradients[name])
    added = torch.cat(
        [(noisy.gradients[k] - g).flatten() for k, g in observation.gradients.items()]
    )
    assert float(added.std()) == pytest.approx(0.01, rel=0.05)
    assert noisy.defense["applied"] == [{"name": "noise", "sigma": 0.01, "seed": 1}]
    assert observation.defense == {}  # the input is not changed


def test_pruning_keeps_the_largest_entries_of_each_layer(observation):
    pruned = prune(observation, 0.1)
    for name, g in observation.gradients.items():
        kept = pruned.gradients[name] != 0
        assert int(kept.sum()) <= max(1, round(0.1 * g.numel()))
        if kept.any() and (~kept).any():
            assert g[kept].abs().min() >= g[~kept].abs().max()


def test_clipping_bounds_the_update_norm_and_chains(observation):
    clipped = clip(prune(observation, 0.5), 1e-3)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in clipped.gradients.values()))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)
    assert [d["name"] for d in clipped.defense["applied"]] == ["prune", "clip"]


def test_defense_errors_name_the_problem(observation):
    with pytest.raises(GradleakError, match="unknown defense 'blur'"):
        apply_defense(observation, "blur")
    with pytest.raises(GradleakError, match="fraction in"):
        prune(observation, 0.0)
    with pytest.raises(GradleakError, match="sigma"):
        add_noise(observation, -1.0)
    with pytest.raises(GradleakError, match="defense 'noise'"):
        apply_defense(observation, "noise", keep=0.1)


def test_fedavg_rounds_drift_the_model_and_lower_the_loss(cifar10):
    model = build_model("lenet", seed=0)
    images, labels = cifar10.images, cifar10.labels
    before = nn.functional.cross_entropy(model(images), labels).item()
    rounds = dict(
        fedavg_rounds(model, images, labels, rounds=20, clients=2, batch_size=10, lr=0.03)
    )
    after = nn.functional.cross_entropy(rounds[20](images), labels).item()
    assert after < before

    def drift(other):
        return weight_drift(other.net.state_dict(), model.net.state_dict())

    assert 0 < drift(rounds[1]) < drift(rounds[20])
    assert drift(build_model("lenet", seed=0)) == 0.0  # the input model is kept
