"""FedAvg update observations, their replay, secure aggregates and the attacks on them."""

from __future__ import annotations

import json

import pytest
import torch
from clitools import call_main

from gradleak.attacks import attack_class
from gradleak.errors import GradleakError
from gradleak.gradient.labels import recover_labels
from gradleak.gradient.simulation import ClientSimulator, assumed_local_training
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.threat import LocalTraining, load_observation, observe, save_observation


def replay_error(observation, images, labels) -> float:
    """Relative error of the attacker's replay of the true images against the observation."""
    view = observation.attacker_view()
    simulator = ClientSimulator(view.build_model(), observation=view)
    with torch.no_grad():
        replayed = simulator.gradients(images[None], labels[None])
    diff = sum(
        (r[0] - observation.gradients[n]).pow(2).sum()
        for r, n in zip(replayed, simulator.names, strict=True)
    )
    norm = sum(g.pow(2).sum() for g in observation.gradients.values())
    return float((diff / norm).sqrt())


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_replay_of_true_images_is_exact(cifar10, optimizer):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    model = build_model("lenet", num_classes=10, seed=0)
    lr = 0.01 if optimizer == "adam" else 0.1
    for steps in (1, 3):
        training = LocalTraining(
            lr=lr, batch_size=2, steps=steps, optimizer=optimizer, shuffle=True
        )
        observation = observe(model, images, labels, local=training)
        assert observation.kind == "update"
        assert len(observation.local["order"]) == steps
        assert replay_error(observation, images, labels) < 1e-5


def test_replay_with_train_mode_batchnorm_and_clients_is_exact(cifar10):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    model = build_model("convnet", num_classes=10, seed=0, width=8)
    training = LocalTraining(lr=0.05, batch_size=1, epochs=2, optimizer="momentum")
    observation = observe(model, images, labels, local=training, clients=2)
    assert observation.clients == 2 and observation.images_per_client == 2
    assert replay_error(observation, images, labels) < 1e-5
    # the client trained a copy: the server's model and its BatchNorm buffers are unchanged
    fresh = build_model("convnet", num_classes=10, seed=0, width=8)
    for (name, a), b in zip(
        model.net.state_dict().items(), fresh.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_update_file_round_trip_and_hidden_facts(cifar10, tmp_path):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.1, batch_size=2, epochs=1, shuffle=True, order_seed=3)
    observation = observe(
        model, images, labels, local=training, knows_local={"lr": False, "order": False}
    )
    path = save_observation(observation, tmp_path / "update.safetensors")
    loaded = load_observation(path)
    assert loaded.kind == "update" and loaded.local == observation.local
    assert loaded.hidden_local_facts == ["lr", "order"]
    view = loaded.attacker_view()
    assert view.local["lr"] is None and view.local["order"] is None
    assert view.local["batch_size"] == 2
    training, order, assumed = assumed_local_training(view, lr_guess=0.05)
    assert training.lr == 0.05 and order == [[0, 1], [2, 3]]
    assert assumed == {"lr": 0.05, "order": "unshuffled"}
    for key, value in observation.gradients.items():
        assert torch.equal(loaded.gradients[key], value)
    steps_hidden = observe(
        model, images, labels, local=LocalTraining(lr=0.1, batch_size=1, steps=8),
        knows_local={"steps": False},
    )  # fmt: skip
    assert steps_hidden.hidden_local_facts == ["steps", "order"]  # the order lists every step
    training, order, _ = assumed_local_training(steps_hidden.attacker_view())
    assert len(order) == 4  # one epoch of the known local batch size


def test_bad_local_training_is_refused(cifar10):
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    model = build_model("lenet", num_classes=10, seed=0)
    with pytest.raises(GradleakError, match="exactly one of steps or epochs"):
        LocalTraining(lr=0.1, batch_size=2)
    with pytest.raises(GradleakError, match="unknown local optimizer"):
        LocalTraining(lr=0.1, batch_size=2, steps=1, optimizer="rmsprop")
    with pytest.raises(GradleakError, match="positive number"):
        LocalTraining(lr=-1.0, batch_size=2, steps=1)
    with pytest.raises(GradleakError, match="split evenly over 3 clients"):
        observe(model, images, labels, clients=3)
    with pytest.raises(GradleakError, match="unknown local-training facts"):
        observe(
            model, images, labels, local=LocalTraining(lr=0.1, batch_size=2, steps=1),
            knows_local={"momentum": False},
        )  # fmt: skip


def test_one_sgd_step_is_read_as_a_gradient(cifar10):
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    model = build_model("mlp4", num_classes=10, seed=0)
    update = observe(model, images, labels, local=LocalTraining(lr=0.5, batch_size=2, steps=1))
    gradient = observe(model, images, labels)
    assert update.is_scaled_gradient()
    for key, value in update.as_gradient().gradients.items():
        torch.testing.assert_close(value, gradient.gradients[key], rtol=1e-4, atol=1e-7)
    two_steps = observe(model, images, labels, local=LocalTraining(lr=0.5, batch_size=1, steps=2))
    assert not two_steps.is_scaled_gradient()
    problems = attack_class("rgap")().check(two_steps)
    assert any("reads one averaged gradient" in p for p in problems)


def test_secure_aggregate_of_four_clients_is_unmixed(cifar10):
    """Target of the FL-setups issue: 4 clients of one image each on mlp4, every image >= 30 dB
    (measured 117-146 dB with fc_unmix on the first 4 CIFAR-10 test images)."""
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    model = build_model("mlp4", num_classes=10, seed=0)
    observation = observe(model, images, labels, clients=4)
    result = attack_class("fc_unmix")()(observation)
    score = score_batch(result.images, images, result.labels, labels)
    assert score.psnr.min() >= 30
    assert "one batch" in result.notes["clients"]


def test_label_counts_from_an_update(cifar10):
    """Counts from a 2-epoch update of a sigmoid MLP, read through its mean-gradient estimate."""
    images, labels = cifar10.images[:8], cifar10.labels[:8]
    model = build_model("mlp4", num_classes=10, seed=0)
    training = LocalTraining(lr=0.01, batch_size=2, epochs=2)
    view = observe(model, images, labels, local=training, knows_labels=False).attacker_view()
    recovered = recover_labels(view, model, batch_size=8)
    assert sorted(recovered.labels.tolist()) == sorted(labels.tolist())


@pytest.mark.slow
def test_attacks_on_an_update_recover_the_images(cifar10):
    """DLG (cosine, TV 1e-4, L-BFGS) through 2 unrolled SGD steps of batch 1 on LeNet, labels
    known (measured 28.4 / 19.7 dB at 50 steps; gray images score 14.1 / 9.7 dB)."""
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.1, batch_size=1, epochs=1)
    observation = observe(model, images, labels, local=training)
    attack = attack_class("dlg")(labels="known", distance="cosine", tv=1e-4)
    result = attack(observation, iterations=50)
    gray = attack_class("gray")()(observation)
    psnr = score_batch(result.images, images).psnr
    assert psnr.mean() >= score_batch(gray.images, images).psnr.mean() + 8
    assert psnr.min() >= 17
    assert "FedAvg update" in result.notes["observed"]


def test_hidden_learning_rate_is_learned(cifar10):
    images, labels = cifar10.images[:1], cifar10.labels[:1]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.1, batch_size=1, steps=2)
    observation = observe(model, images, labels, local=training, knows_local={"lr": False})
    result = attack_class("inverting_gradients")()(observation, iterations=20)
    assert result.notes["assumed"] == {"lr": 0.01}
    assert result.notes["estimated_lr"] != pytest.approx(0.01)


def test_fedavg_leakage_keeps_one_variable_set_per_epoch(cifar10):
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.05, batch_size=1, epochs=3, shuffle=True)
    observation = observe(model, images, labels, local=training, knows_local={"order": False})
    result = attack_class("fedavg_leakage")()(observation, iterations=4)
    assert result.images.shape == images.shape
    assert result.notes["epochs"] == 3
    hidden = observe(model, images, labels, local=training, knows_labels=False)
    joint = attack_class("fedavg_leakage")()(hidden, iterations=3)  # joint labels, refined
    assert joint.labels.shape == labels.shape
    gradient = observe(model, images, labels)
    assert any("FedAvg" in p for p in attack_class("fedavg_leakage")().check(gradient))


def test_observe_cli_writes_updates_and_refuses_bad_options(tmp_path, monkeypatch, capsys):
    out = tmp_path / "update.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys,
        "observe", "--model", "lenet", "--images", "cifar10", "--n-images", "4", "--out", out,
        "--local-steps", "2", "--local-batch-size", "2", "--lr", "0.1",
        "--optimizer", "momentum", "--hide", "lr,order", "--clients", "2",
    )  # fmt: skip
    assert code == 0, err
    observation = load_observation(out)
    assert observation.kind == "update" and observation.clients == 2
    assert observation.local["optimizer"] == "momentum"
    assert observation.hidden_local_facts == ["lr", "order"]
    for extra, message in (
        (["--lr", "0.1"], "add --local-steps K or --local-epochs E"),
        (["--local-steps", "2"], "needs the client's learning rate"),
        (["--local-steps", "2", "--lr", "0.1", "--hide", "colour"], "unknown fact"),
        (["--local-steps", "2", "--local-epochs", "1", "--lr", "0.1"], "not both"),
        (["--clients", "3"], "split evenly over 3 clients"),
    ):
        code, _, err = call_main(
            monkeypatch, capsys,
            "observe", "--model", "lenet", "--images", "cifar10", "--n-images", "2",
            "--out", tmp_path / "x.safetensors", *extra,
        )  # fmt: skip
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1


def test_attack_cli_on_an_update_records_what_it_replayed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "update.safetensors"
    call_main(
        monkeypatch, capsys,
        "observe", "--model", "lenet", "--images", "cifar10", "--n-images", "2", "--out", out,
        "--local-steps", "2", "--local-batch-size", "1", "--lr", "0.1", "--hide", "lr",
    )  # fmt: skip
    code, _, err = call_main(
        monkeypatch, capsys, "attack", out, "--method", "auto", "--iterations", "2",
        "--out", tmp_path / "auto", "--threads", "1",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    by_attack = {case["attack"]: case for case in results["cases"]}
    assert by_attack["rgap"]["status"] == "skipped"
    assert "reads one averaged gradient" in by_attack["rgap"]["error"]
    assert by_attack["inverting_gradients"]["status"] == "done"


@pytest.mark.parametrize("name", ["dlg", "idlg", "gradinversion", "dip"])
def test_every_matching_attack_replays_updates(cifar10, name):
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.1, batch_size=1, epochs=1)
    observation = observe(model, images, labels, local=training)
    assert attack_class(name)().check(observation) == []
    result = attack_class(name)()(observation, iterations=2, restarts=1)
    assert result.images.shape == images.shape
    assert "FedAvg update" in result.notes["observed"]
