"""Learned inversion (Learning to Invert, Wu et al. 2023): hashing, training, inverter, attack."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import get_attack
from gradleak.data.auxiliary import auxiliary_images
from gradleak.errors import GradleakError
from gradleak.learned import (
    FeatureHasher,
    assignment_loss,
    load_inverter,
    train_inverter,
)
from gradleak.learned.inverter import GradientEncoder
from gradleak.learned.training import _PerSampleGradients
from gradleak.learning import save_artifact
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.threat import observe

TINY = {"hash_dim": 256, "hidden": 256, "minibatch": 32}


@pytest.fixture(scope="module")
def aux(cifar10):
    """1,200 shared CIFAR-10 JPEG test images, none of them a copy of the 20 private ones."""
    return auxiliary_images("cifar10:aux", exclude=cifar10, n=1200)


@pytest.fixture(scope="module")
def trained(aux, cifar10, tmp_path_factory):
    """A tiny LeNet inverter for batch sizes 1..4, trained in seconds on all but 20 of ``aux``."""
    path = tmp_path_factory.mktemp("inverter") / "lenet.safetensors"
    model = build_model("lenet")
    train, unseen = aux.subset(slice(0, len(aux) - 20)), aux.subset(slice(len(aux) - 20, None))
    inverter = train_inverter(
        model, train, out=path, steps=400, batch_sizes=(1, 4), private=unseen, lr=2e-3, **TINY
    )
    return model, inverter, path


@pytest.fixture(scope="module")
def quick(aux, cifar10, tmp_path_factory):
    """An untrained-quality LeNet inverter for batch sizes 1..4 (a few steps): for the attack's
    plumbing and errors, not its quality."""
    path = tmp_path_factory.mktemp("quick") / "lenet.safetensors"
    model = build_model("lenet")
    inverter = train_inverter(
        model, aux.subset(slice(0, 200)), out=path, steps=5, batch_sizes=(1, 4),
        hash_dim=64, hidden=16, minibatch=8,
    )  # fmt: skip
    return model, inverter, path


def test_count_sketch_equals_dense_reference_and_is_linear():
    hasher = FeatureHasher(7, seed=3)
    g = torch.randn(50, generator=torch.Generator().manual_seed(0))
    buckets, signs = hasher.tables(50)
    dense = torch.zeros(7, 50)
    dense[buckets, torch.arange(50)] = signs
    assert torch.allclose(hasher(g), dense @ g, atol=1e-6)
    batch = torch.randn(4, 50)
    assert torch.allclose(hasher(batch), batch @ dense.T, atol=1e-5)
    a, b = torch.randn(50), torch.randn(50)
    assert torch.allclose(hasher(2 * a - 3 * b), 2 * hasher(a) - 3 * hasher(b), atol=1e-5)
    assert not torch.allclose(FeatureHasher(7, seed=4)(g), hasher(g))
    grads = {"w": g[:30].view(5, 6), "b": g[30:]}
    assert torch.equal(hasher(grads), hasher(g))
    with pytest.raises(GradleakError, match="at least 1"):
        FeatureHasher(0)


def test_mean_of_per_sample_hashes_is_the_hash_of_the_batch_gradient(bundled):
    model = build_model("lenet")
    names = [n for n, _ in model.net.named_parameters()]
    sizes = [p.numel() for _, p in model.net.named_parameters()]
    encoder = GradientEncoder(names, sizes, FeatureHasher(512, seed=1))
    source = _PerSampleGradients(model, encoder, bundled, (1, 4), flip=True, fit=True)
    assert not torch.equal(encoder.layer_scale, torch.ones(len(names)))
    index = [0, 3, 5]
    batch = observe(model, bundled.images[index], bundled.labels[index])
    expected = encoder.hash_observation(batch)[0]
    assert torch.allclose(source.hashes[index].mean(0), expected, rtol=1e-4, atol=1e-5)
    flipped = observe(model, bundled.images[2:3].flip(-1), bundled.labels[2:3])
    expected = encoder.hash_observation(flipped)[0]
    assert torch.allclose(source.hashes[len(bundled) + 2], expected, rtol=1e-4, atol=1e-5)


def test_assignment_loss_is_invariant_to_the_order_of_the_batch():
    generator = torch.Generator().manual_seed(0)
    predicted = torch.rand(3, 4, 2, 5, 5, generator=generator)
    target = torch.rand(3, 4, 2, 5, 5, generator=generator)
    sizes = torch.tensor([1, 3, 4])
    loss, order = assignment_loss(predicted, target, sizes)
    permuted = target.clone()
    permuted[1, :3] = target[1, [2, 0, 1]]
    permuted[2] = target[2, [3, 1, 0, 2]]
    assert torch.allclose(assignment_loss(predicted, permuted, sizes)[0], loss)
    # a batch of one uses the first slot only, so the other targets do not count
    single = assignment_loss(predicted[:1], target[:1], sizes[:1])[0]
    assert torch.allclose(single, (predicted[0, 0] - target[0, 0]).pow(2).mean())
    assert order[0].tolist() == [0, -1, -1, -1]
    # the optimal assignment is no worse than the given order
    naive = sum(
        (predicted[i, :s] - target[i, :s]).pow(2).mean() * s for i, s in enumerate([1, 3, 4])
    )
    assert loss <= naive / 8 + 1e-6


def test_training_resumes_bit_identically(aux, tmp_path):
    model = build_model("lenet")
    data = aux.subset(slice(0, 100))
    settings = {"batch_sizes": (1, 2), "hash_dim": 64, "hidden": 16, "minibatch": 8, "steps": 6}
    whole = train_inverter(model, data, out=tmp_path / "a.safetensors", **settings)
    assert not (tmp_path / "a.ckpt.safetensors").exists()  # removed once the output is written

    class Interrupted(Exception):
        pass

    def interrupt(done, _total, _values):
        if done == 3:
            raise Interrupted

    out = tmp_path / "b.safetensors"
    with pytest.raises(Interrupted):  # killed after step 3; the checkpoint holds step 2
        train_inverter(model, data, out=out, checkpoint_every=2, progress=interrupt, **settings)
    assert not out.exists()
    resumed = train_inverter(model, data, out=out, checkpoint_every=2, **settings)
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert load_inverter(out).card["final"] == whole.card["final"]
    out = tmp_path / "c.safetensors"  # an interrupted run's checkpoint fits that run only
    with pytest.raises(Interrupted):
        train_inverter(model, data, out=out, checkpoint_every=2, progress=interrupt, **settings)
    with pytest.raises(GradleakError, match="another training run"):
        train_inverter(model, data, out=out, **{**settings, "hidden": 8})


@pytest.mark.slow
def test_trained_inverter_beats_gray_and_chance(trained, aux, cifar10):
    model, inverter, path = trained
    card = load_inverter(path).card
    assert card["kind"] == "inverter" and card["batch_sizes"] == [1, 4]
    assert card["model_fingerprint"] and card["aux"]["held_out"] > 0
    scores = card["held_out_scores"]
    assert scores["mse"] < scores["gray_mse"]
    assert scores["batch_size_accuracy"] > 0.3  # chance: 0.25 (512 batches: sd 0.02)
    unseen = aux.subset(slice(len(aux) - 10, None))  # never trained on
    images = unseen.images
    reconstructed = torch.cat(
        [
            inverter.invert(observe(model, images[i : i + 1], unseen.labels[i : i + 1]))
            for i in range(10)
        ]
    )
    assert reconstructed.shape == images.shape
    psnr = score_batch(reconstructed, images).psnr.mean()
    gray = score_batch(torch.full_like(images, 0.5), images).psnr.mean()
    assert psnr > gray + 0.5
    hidden = observe(model, cifar10.images[:4], cifar10.labels[:4], knows_batch_size=False)
    probabilities = inverter.batch_size_probabilities(hidden)
    assert probabilities.shape == (4,) and torch.isclose(probabilities.sum(), torch.tensor(1.0))


def test_learned_attack_with_and_without_refinement(quick, cifar10):
    model, _, path = quick
    obs = observe(
        model, cifar10.images[:2], cifar10.labels[:2], knows_batch_size=False, knows_labels=False
    )
    fast = get_attack("learned", inverter=str(path), refine="none")(obs)
    assert fast.iterations == 0 and fast.images.shape[0] == fast.notes["predicted_batch_size"]
    assert fast.labels.shape == (len(fast.images),) and fast.notes["weight_drift"] == 0.0
    refined = get_attack("learned", inverter=str(path))(obs, iterations=3, batch_size=2)
    assert refined.iterations == 3 and refined.images.shape == (2, 3, 32, 32)
    assert refined.notes["predicted_batch_size"] in (1, 2, 3, 4)
    drifted = observe(build_model("lenet", seed=1), cifar10.images[:1], cifar10.labels[:1])
    result = get_attack("learned", inverter=str(path), refine="none")(drifted)
    assert result.notes["weight_drift"] > 0.1 and result.images.shape == (1, 3, 32, 32)


def test_learned_errors(quick, cifar10, tmp_path):
    model, inverter, path = quick
    obs = observe(model, cifar10.images[:1], cifar10.labels[:1])
    with pytest.raises(GradleakError, match="needs a trained inverter"):
        get_attack("learned")(obs)
    with pytest.raises(GradleakError, match="refine"):
        get_attack("learned", inverter=str(path), refine="gias")(obs)
    other = tmp_path / "generator.safetensors"
    save_artifact(other, {"w": torch.zeros(2)}, {"model": "x"}, kind="generator")
    with pytest.raises(GradleakError, match="not a 'inverter'"):
        load_inverter(other)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(GradleakError):
        load_inverter(corrupt)
    narrow = build_model("lenet", width=6)
    mismatch = observe(narrow, cifar10.images[:1], cifar10.labels[:1])
    with pytest.raises(GradleakError, match="architecture"):
        inverter.invert(mismatch)
    with pytest.raises(GradleakError, match="at most 4"):
        inverter.invert(obs, batch_size=5)


@pytest.mark.slow
def test_batchnorm_models_train_on_batch_gradients(tmp_path, aux):
    model = build_model("resnet20", width=4)
    inverter = train_inverter(
        model,
        aux.subset(slice(0, 40)),
        out=tmp_path / "bn.safetensors",
        steps=2,
        batch_sizes=(2, 3),
        hash_dim=32,
        hidden=8,
        minibatch=4,
    )
    assert inverter.card["gradients"] == "batch gradients" and inverter.card["bn_mode"] == "train"
    obs = observe(model, aux.images[:2], aux.labels[:2], bn_mode="eval")
    with pytest.raises(GradleakError, match="BatchNorm"):
        inverter.invert(obs)
    obs = observe(model, aux.images[:2], aux.labels[:2])
    assert inverter.invert(obs).shape == (2, 3, 32, 32)
