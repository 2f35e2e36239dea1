"""The dp defense: DP-SGD computed by Opacus, checked against a per-sample computation by hand."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

pytest.importorskip("opacus")

from opacus.accountants import create_accountant  # noqa: E402

from gradleak.defenses import ClientBatch, defended_step, parse_defense  # noqa: E402
from gradleak.defenses.dp import dp_epsilon, noise_for_epsilon  # noqa: E402
from gradleak.errors import GradleakError  # noqa: E402
from gradleak.models import build_model  # noqa: E402
from gradleak.threat import LocalTraining, observe  # noqa: E402

Q = {"dataset_size": 1000}


def clipped_mean(model, images, targets, max_norm, eval_mode=False):
    """Abadi et al.'s Alg. 1 without noise, one image at a time: the mean of the per-sample
    gradients, each scaled by min(1, C / (|g_i| + 1e-6)) as Opacus does."""
    model = copy.deepcopy(model).train(not eval_mode)
    names = [n for n, _ in model.net.named_parameters()]
    total = {n: torch.zeros_like(p) for n, p in model.net.named_parameters()}
    for i in range(len(images)):
        loss = nn.functional.cross_entropy(model(images[i : i + 1]), targets[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.net.parameters()))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for name, g in zip(names, grads, strict=True):
            total[name] += factor * g / len(images)
    return total


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def batch(cifar10):
    return cifar10.images[:3], cifar10.labels[:3]


@pytest.fixture(scope="module")
def lenet():
    return build_model("lenet")


def dp_observe(model, images, labels, seed=0, **params):
    params = {"max_grad_norm": 5.0, **Q, **params}
    return observe(model, images, labels, defenses=[("dp", params)], defense_seed=seed)


def test_without_noise_the_gradient_is_the_clipped_mean(lenet, batch):
    images, labels = batch
    observation = dp_observe(lenet, images, labels, noise_multiplier=0.0, max_grad_norm=5.0)
    expected = clipped_mean(lenet, images, labels, max_norm=5.0)
    assert max_difference(observation.gradients, expected) < 1e-5
    record = observation.defense["applied"][0]
    assert record["name"] == "dp" and record["noise_multiplier"] == 0.0
    assert record["epsilon"] == math.inf and 0 < record["clipped"] <= 1
    assert record["sample_rate"] == pytest.approx(3 / 1000) and record["steps"] == 1
    # a clipping norm above every per-sample norm gives the plain averaged gradient
    loose = dp_observe(lenet, images, labels, noise_multiplier=0.0, max_grad_norm=1e6)
    reference = observe(lenet, images, labels)
    assert max_difference(loose.gradients, reference.gradients) < 1e-5


def test_noise_has_std_sigma_c_over_b(lenet, batch):
    images, labels = batch
    sigma, clip = 2.0, 5.0
    clean = dp_observe(lenet, images, labels, noise_multiplier=0.0, max_grad_norm=clip)
    noisy = dp_observe(lenet, images, labels, noise_multiplier=sigma, max_grad_norm=clip)
    noise = torch.cat(
        [(noisy.gradients[k] - clean.gradients[k]).flatten() for k in clean.gradients]
    )
    expected = sigma * clip / len(images)
    assert noise.numel() > 10_000
    assert float(noise.std()) == pytest.approx(expected, rel=0.03)
    assert abs(float(noise.mean())) < 4 * expected / math.sqrt(noise.numel())


def test_seeded(lenet, batch):
    images, labels = batch
    first = dp_observe(lenet, images, labels, seed=1, noise_multiplier=1.0)
    again = dp_observe(lenet, images, labels, seed=1, noise_multiplier=1.0)
    other = dp_observe(lenet, images, labels, seed=2, noise_multiplier=1.0)
    assert max_difference(first.gradients, again.gradients) == 0
    assert max_difference(first.gradients, other.gradients) > 0.1


def test_epsilon_is_opacus_accountants(lenet, batch):
    images, labels = batch
    params = {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 0.01, "steps": 500}
    observation = observe(lenet, images, labels, defenses=[("dp", params)])
    record = observation.defense["applied"][0]
    accountant = create_accountant("rdp")
    accountant.history = [(1.1, 0.01, 500)]
    assert record["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert record["delta"] == 1e-5 and record["steps"] == 500 and record["accountant"] == "rdp"
    for name in ("prv", "gdp"):
        other = create_accountant(name)
        other.history = [(1.1, 0.01, 500)]
        assert dp_epsilon(1.1, 0.01, 500, 1e-5, name) == pytest.approx(
            other.get_epsilon(delta=1e-5), rel=1e-9
        )


def test_epsilon_falls_with_noise_and_inverts():
    epsilons = [dp_epsilon(s, 0.01, 1000, 1e-5) for s in (0.6, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(epsilons, epsilons[1:], strict=False))
    assert dp_epsilon(0.0, 0.01, 1000, 1e-5) == math.inf
    sigma = noise_for_epsilon(8.0, 0.01, 1000, 1e-5)
    assert 7.9 <= dp_epsilon(sigma, 0.01, 1000, 1e-5) <= 8.0


def test_target_epsilon(lenet, batch):
    images, labels = batch
    observation = dp_observe(lenet, images, labels, target_epsilon=8.0, steps=1000)
    record = observation.defense["applied"][0]
    assert record["target_epsilon"] == 8.0 and 7.9 <= record["epsilon"] <= 8.0
    assert record["noise_multiplier"] == pytest.approx(noise_for_epsilon(8.0, 0.003, 1000, 1e-5))


def test_soft_targets(lenet, batch):
    images, labels = batch
    soft = torch.full((3, 10), 0.02)
    soft[torch.arange(3), labels] = 0.82
    client = ClientBatch(lenet, images, soft)
    step = defended_step(
        client, [("dp", {"noise_multiplier": 0.0, "max_grad_norm": 5.0, **Q})], compute=None
    )
    assert max_difference(step.gradients, clipped_mean(lenet, images, soft, 5.0)) < 1e-5


def test_model_left_unchanged(lenet, batch):
    images, labels = batch
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    dp_observe(lenet, images, labels, noise_multiplier=1.0)
    observe(
        lenet,
        images,
        labels,
        local=LocalTraining(lr=0.1, batch_size=2, steps=2),
        defenses=[("dp", {"noise_multiplier": 1.0, "max_grad_norm": 5.0, **Q})],
    )
    assert all(torch.equal(before[k], v) for k, v in lenet.state_dict().items())
    assert all(p.grad is None for p in lenet.parameters())
    assert not hasattr(lenet, "autograd_grad_sample_hooks")


def test_train_mode_batchnorm_is_refused(batch):
    images, labels = batch
    model = build_model("convnet", width=4)
    with pytest.raises(GradleakError, match="dp needs a model without train-mode BatchNorm"):
        dp_observe(model, images, labels, noise_multiplier=1.0)


def test_eval_mode_batchnorm_is_exact(batch):
    images, labels = batch
    model = build_model("convnet", width=4)
    generator = torch.Generator().manual_seed(0)
    for layer in model.modules():  # running statistics that matter
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.normal_(0, 0.3, generator=generator)
            layer.running_var.uniform_(0.5, 2.0, generator=generator)
            layer.weight.data.uniform_(0.5, 1.5, generator=generator)
    observation = observe(
        model,
        images,
        labels,
        bn_mode="eval",
        defenses=[("dp", {"noise_multiplier": 0.0, "max_grad_norm": 0.5, **Q})],
    )
    expected = clipped_mean(model, images, labels, 0.5, eval_mode=True)
    assert max_difference(observation.gradients, expected) < 1e-5
    assert any("bn" in name for name in observation.gradients)


def test_local_training_update(lenet, batch):
    images, labels = batch
    local = LocalTraining(lr=0.05, batch_size=2, steps=2)
    observation = observe(
        lenet,
        images,
        labels,
        local=local,
        defenses=[("dp", {"noise_multiplier": 0.0, "max_grad_norm": 5.0, "dataset_size": 10})],
    )
    assert observation.kind == "update"
    record = observation.defense["applied"][0]
    assert record["steps"] == 2 and record["sample_rate"] == pytest.approx(2 / 10)
    # by hand: plain SGD on the clipped mean of each local batch ([0, 1], then [2])
    client = copy.deepcopy(lenet)
    for indices in local.order(3):
        step = clipped_mean(client, images[indices], labels[indices], 5.0)
        with torch.no_grad():
            for name, p in client.net.named_parameters():
                p -= local.lr * step[name]
    server = dict(lenet.net.named_parameters())
    expected = {n: (server[n] - p).detach() for n, p in client.net.named_parameters()}
    assert max_difference(observation.gradients, expected) < 1e-5
    noisy = observe(
        lenet,
        images,
        labels,
        local=LocalTraining(lr=0.05, batch_size=2, steps=2, optimizer="adam"),
        defenses=[("dp", {"noise_multiplier": 1.0, "max_grad_norm": 5.0, "dataset_size": 10})],
    )
    assert all(torch.isfinite(g).all() for g in noisy.gradients.values())


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"noise_multiplier": 1.0, **Q}, "needs max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0}, "exactly one of sample_rate"),
        ({"max_grad_norm": 1.0, **Q}, "exactly one of noise_multiplier"),
        ({"noise_multiplier": 1.0, "target_epsilon": 2.0, "max_grad_norm": 1.0, **Q}, "one of"),
        ({"noise_multiplier": -1.0, "max_grad_norm": 1.0, **Q}, "noise_multiplier must"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0.0, **Q}, "max_grad_norm"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 2.0}, "sample_rate"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "dataset_size": 2}, "smaller than"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "x", **Q}, "accountant"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1.0, **Q}, "delta"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "steps": 0, **Q}, "steps"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sigma": 1.0, **Q}, "no parameter"),
    ],
)
def test_bad_parameters(lenet, batch, params, message):
    images, labels = batch
    with pytest.raises(GradleakError, match=message):
        observe(lenet, images, labels, defenses=[("dp", params)])


def test_parsed_from_text():
    name, params = parse_defense("dp:noise_multiplier=1.0,max_grad_norm=2,dataset_size=50000")
    assert name == "dp" and params["dataset_size"] == 50000
    with pytest.raises(GradleakError, match="needs max_grad_norm"):
        parse_defense("dp:noise_multiplier=1.0")


def test_missing_opacus_says_how_to_install(lenet, batch, monkeypatch):
    import sys

    images, labels = batch
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(GradleakError, match=r'pip install "gradleak\[dp\]"'):
        dp_observe(lenet, images, labels, noise_multiplier=1.0)
