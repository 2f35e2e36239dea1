"""Gradient-matching attacks on real images: quality thresholds, labels, engine parts."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import DLG, IDLG, InvertingGradients, get_attack
from gradleak.attacks.objectives import GradientDistance
from gradleak.errors import GradleakError
from gradleak.gradient import ClientSimulator, idlg_label
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.threat import observe


def _observe_one(model_name, images, index, **model_kwargs):
    model = build_model(model_name, seed=0, **model_kwargs)
    return observe(model, images.images[index : index + 1], images.labels[index : index + 1])


@pytest.mark.slow
def test_mlp_batch1_l2_reaches_30db(flowers):
    """The write-up's 4-layer MLP, batch size 1, known label, l2, no prior."""
    for index in (0, 5):
        obs = _observe_one("mlp4", flowers, index, image_size=64, num_classes=17)
        rec = DLG(labels="known")(obs, iterations=60, seed=0)
        score = score_batch(rec.images, obs.truth.images)
        assert float(score.psnr[0]) >= 30.0, f"image {index}: {float(score.psnr[0]):.1f} dB"


@pytest.mark.slow
def test_lenet_batch1_reaches_25db(cifar10):
    """iDLG on the DLG LeNet, batch size 1, real CIFAR-10 test image, label not known."""
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1], knows_labels=False)
    rec = IDLG()(obs, iterations=80, seed=0)
    score = score_batch(rec.images, obs.truth.images, rec.labels, obs.truth.labels)
    assert float(score.psnr[0]) >= 25.0, f"{float(score.psnr[0]):.1f} dB"
    assert score.label_accuracy == 1.0


@pytest.mark.parametrize("model_name", ["lenet", "mlp4"])
def test_idlg_labels_exact_on_20_real_images(cifar10, model_name):
    model = build_model(model_name, seed=3)
    for i in range(len(cifar10)):
        obs = observe(model, cifar10.images[i : i + 1], cifar10.labels[i : i + 1])
        label = idlg_label(obs.attacker_view(), obs.build_model())
        assert int(label) == int(cifar10.labels[i]), f"image {i}"


def test_idlg_label_needs_batch_size_one(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:2], cifar10.labels[:2], knows_labels=False)
    with pytest.raises(GradleakError, match="batch size 1"):
        idlg_label(obs.attacker_view(), obs.build_model())


def test_analytic_labels_for_a_batch_use_count_recovery(cifar10):
    """Hidden labels at batch size 4 (one repeated): the analytic strategy recovers them all."""
    model = build_model("lenet", seed=0)
    index = [1, 2, 0, 3]  # labels 8, 8, 3, 0
    obs = observe(model, cifar10.images[index], cifar10.labels[index], knows_labels=False)
    rec = IDLG()(obs, iterations=1)
    assert sorted(rec.labels.tolist()) == sorted(cifar10.labels[index].tolist())


def test_known_labels_refused_when_hidden(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1], knows_labels=False)
    with pytest.raises(GradleakError, match="hides the labels"):
        DLG(labels="known")(obs, iterations=1)


@pytest.mark.slow
def test_dlg_joint_labels_recover_label(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[1:2], cifar10.labels[1:2], knows_labels=False)
    rec = DLG()(obs, iterations=40, seed=1)
    assert rec.labels.tolist() == cifar10.labels[1:2].tolist()


def test_attacks_ignore_ground_truth(cifar10):
    """An attack must give the same answer whether or not the truth travels with it."""
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1])
    stripped = obs.attacker_view()
    a = InvertingGradients()(obs, iterations=5, seed=2)
    b = InvertingGradients()(stripped, iterations=5, seed=2)
    assert torch.equal(a.images, b.images)


def test_vmapped_restarts_equal_loop(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:2], cifar10.labels[:2])
    candidates = torch.rand(3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = obs.labels.expand(3, 2)
    fast = ClientSimulator(obs.build_model(), vectorize=True).gradients(candidates, labels)
    slow = ClientSimulator(obs.build_model(), vectorize=False).gradients(candidates, labels)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-5, atol=1e-6)
    # and the simulator replays the client exactly on the true batch
    true = ClientSimulator(obs.build_model()).gradients(obs.truth.images[None], labels[:1])
    for name, g in zip(ClientSimulator(obs.build_model()).names, true, strict=True):
        torch.testing.assert_close(g[0], obs.gradients[name], rtol=1e-5, atol=1e-7)


def test_simulated_gradients_are_differentiable_in_the_images_only(cifar10):
    """One restart (plain autograd) and several (vmap) give the images a gradient and leave the
    model's weights untouched."""
    obs = observe(build_model("lenet", seed=0), cifar10.images[:1], cifar10.labels[:1])
    simulator = ClientSimulator(obs.build_model())
    distance = GradientDistance("cosine", [obs.gradients[n] for n in simulator.names])
    for restarts in (1, 3):
        images = torch.rand(restarts, 1, 3, 32, 32, requires_grad=True)
        grads = simulator.gradients(images, obs.labels.expand(restarts, 1))
        distance(grads).sum().backward(inputs=[images])
        assert images.grad is not None and float(images.grad.abs().sum()) > 0
        assert all(w.grad is None for w in simulator.model.net.parameters())


def test_batchnorm_model_in_train_mode_replays_client(cifar10):
    model = build_model("resnet20", seed=0)
    obs = observe(model, cifar10.images[:2], cifar10.labels[:2], bn_mode="train")
    simulator = ClientSimulator(obs.build_model())
    grads = simulator.gradients(
        obs.truth.images[None].repeat(2, 1, 1, 1, 1), obs.labels.expand(2, 2)
    )
    distance = GradientDistance("cosine", [obs.gradients[n] for n in simulator.names])
    assert float(distance(grads).max()) < 1e-5


def test_cosine_distance_matches_definition():
    generator = torch.Generator().manual_seed(0)
    target = [torch.randn(4, 3, generator=generator), torch.randn(5, generator=generator)]
    candidate = [torch.randn(2, 4, 3, generator=generator), torch.randn(2, 5, generator=generator)]
    flat_t = torch.cat([t.flatten() for t in target])
    for precise in (False, True):
        got = GradientDistance("cosine", target, precise=precise)(candidate)
        for r in range(2):
            flat_c = torch.cat([c[r].flatten() for c in candidate])
            expected = 1 - torch.nn.functional.cosine_similarity(flat_c, flat_t, dim=0)
            torch.testing.assert_close(got[r], expected)
    l2 = GradientDistance("l2", target)(candidate)
    torch.testing.assert_close(
        l2[0], sum(((c[0] - t) ** 2).sum() for c, t in zip(candidate, target, strict=True))
    )


def test_restarts_keep_the_best_by_gradient_distance(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1])
    rec = InvertingGradients()(obs, iterations=20, restarts=4, seed=0)
    assert len(rec.restart_distances) == 4
    assert rec.gradient_distance == min(rec.restart_distances)
    assert rec.frames and rec.frames[-1].shape == (1, 3, 32, 32)
    assert len(rec.history) == rec.iterations == 20


def test_runs_are_reproducible_by_seed(cifar10):
    model = build_model("lenet", seed=0)
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1])
    a = InvertingGradients()(obs, iterations=10, seed=5)
    b = InvertingGradients()(obs, iterations=10, seed=5)
    c = InvertingGradients()(obs, iterations=10, seed=6)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_unknown_method_and_setting():
    with pytest.raises(GradleakError, match="unknown attack method"):
        get_attack("nope")
    with pytest.raises(GradleakError, match="no setting 'learning_rate'"):
        get_attack("dlg", learning_rate=1.0)
    with pytest.raises(GradleakError, match="unknown gradient distance"):
        GradientDistance("l1", [torch.zeros(1)])
