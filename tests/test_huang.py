"""Huang et al. (NeurIPS 2021): BatchNorm statistics as a threat-model fact, the BN prior's
targets (exact / proxy / running), the threat-model axes in grids and sweeps, the ``huang``
preset."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gradleak.attacks import get_attack
from gradleak.attacks.base import AttackContext
from gradleak.attacks.bn_statistics import TEST_HOLD_OUT, batchnorm_names, batchnorm_target
from gradleak.attacks.priors import batchnorm_distance
from gradleak.errors import GradleakError
from gradleak.gradient.simulation import ClientSimulator
from gradleak.models import build_model
from gradleak.threat import LocalTraining, load_observation, observe, save_observation


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet20", weights="pretrained")


@pytest.fixture(scope="module")
def batch(cifar10):
    return cifar10.images[:2], cifar10.labels[:2]


def _manual_statistics(model, images) -> dict[str, torch.Tensor]:
    """Every BN layer's input mean and biased variance, by forward hooks of our own."""
    seen, handles = {}, []
    for name, module in model.net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):

            def hook(_m, inputs, _o, name=name):
                x = inputs[0]
                seen[name] = torch.stack(
                    [
                        x.mean((0, 2, 3)),
                        ((x - x.mean((0, 2, 3), keepdim=True)) ** 2).mean((0, 2, 3)),
                    ]
                )

            handles.append(module.register_forward_hook(hook))
    model.train()
    with torch.no_grad():
        model.net((images - model.mean) / model.std)
    for handle in handles:
        handle.remove()
    return seen


def _same_statistics(a: dict, b: dict, atol=1e-5) -> bool:
    return set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=atol) for k in a)


# ---------------------------------------------------------------------- the threat-model fact
def test_bn_statistics_recorded_equal_a_manual_computation(resnet, batch):
    images, labels = batch
    running = resnet.net.bn1.running_mean.clone()
    observation = observe(resnet, images, labels, knows_bn_statistics=True)
    expected = _manual_statistics(build_model("resnet20", weights="pretrained"), images)
    assert len(observation.bn_statistics) == 19
    assert _same_statistics(observation.bn_statistics, expected)
    # the first layer by hand: conv1 of the normalized images
    features = resnet.net.conv1((images - resnet.mean) / resnet.std).detach()
    first = observation.bn_statistics["bn1"]
    assert torch.allclose(first[0], features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first[1], features.var((0, 2, 3), unbiased=False), atol=1e-5)
    # observe leaves the caller's model as it was: no hooks left, running statistics untouched
    assert all(not m._forward_hooks for m in resnet.modules())
    assert torch.equal(resnet.net.bn1.running_mean, running)


def test_no_bn_statistics_in_eval_mode_or_without_batchnorm(resnet, batch):
    images, labels = batch
    assert observe(resnet, images, labels, bn_mode="eval").bn_statistics == {}
    assert observe(build_model("lenet"), images, labels).bn_statistics == {}


def test_bn_statistics_hidden_unless_known(resnet, batch):
    images, labels = batch
    hidden = observe(resnet, images, labels)
    assert hidden.knows_bn_statistics is False
    assert hidden.bn_statistics  # recorded, for evaluation and for granting them later
    assert hidden.attacker_view().bn_statistics == {}
    known = dataclasses.replace(hidden, knows_bn_statistics=True)
    assert _same_statistics(known.attacker_view().bn_statistics, hidden.bn_statistics)


def _replayed_statistics(observation) -> dict[str, torch.Tensor]:
    """The statistics the attacker's replay traces for the true images."""
    view = observation.attacker_view()
    model = view.build_model()
    simulator = ClientSimulator(model, batch_statistics=True, observation=view)
    with torch.no_grad():
        _, statistics = simulator.simulate(
            observation.truth.images[None], observation.truth.labels[None]
        )
    names = batchnorm_names(model)
    return {n: torch.stack([m[0], v[0]]) for n, (m, v) in zip(names, statistics, strict=True)}


def test_updates_and_aggregates_record_what_the_replay_traces(cifar10):
    model = build_model("resnet20", weights="pretrained")
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    update = observe(
        model,
        images,
        labels,
        local=LocalTraining(steps=2, batch_size=1, lr=0.05),
        knows_bn_statistics=True,
    )
    recorded = update.bn_statistics
    assert _same_statistics(recorded, _replayed_statistics(update), atol=1e-4)
    # the mean of the two local steps, not the first step's own
    first_step = _manual_statistics(build_model("resnet20", weights="pretrained"), images[:1])
    assert not _same_statistics(recorded, first_step, atol=1e-4)
    aggregate = observe(model, images, labels, clients=2, knows_bn_statistics=True)
    assert _same_statistics(aggregate.bn_statistics, _replayed_statistics(aggregate), atol=1e-4)


def test_save_load_round_trip(resnet, batch, tmp_path):
    images, labels = batch
    observation = observe(resnet, images, labels, knows_bn_statistics=True)
    path = save_observation(observation, tmp_path / "obs.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert "bn/layer1.0.bn1" in set(handle.keys())
        assert json.loads(handle.metadata()["gradleak"])["knows_bn_statistics"] is True
    loaded = load_observation(path)
    assert loaded.knows_bn_statistics is True
    assert _same_statistics(loaded.bn_statistics, observation.bn_statistics, atol=0)

    # a file written before the fields existed: no bn/ tensors, no flag in the header
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("bn/")}
    with safe_open(str(path), "pt") as handle:
        header = json.loads(handle.metadata()["gradleak"])
    header.pop("knows_bn_statistics")
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"gradleak": json.dumps(header)})
    legacy = load_observation(old, with_truth=False)
    assert legacy.bn_statistics == {} and legacy.knows_bn_statistics is False

    # statistics that do not fit the model are refused, naming the layer
    tensors = dict(load_file(str(path)))
    tensors["bn/bn1"] = torch.zeros(2, 3)
    bad = tmp_path / "bad.safetensors"
    with safe_open(str(path), "pt") as handle:
        save_file(tensors, str(bad), metadata=handle.metadata())
    with pytest.raises(GradleakError, match="'bn1'"):
        load_observation(bad, with_truth=False)


# ---------------------------------------------------------------------- the BN prior's target
def test_exact_needs_granted_statistics(resnet, batch):
    images, labels = batch
    hidden = observe(resnet, images, labels)
    problems = get_attack("gradinversion", bn_statistics="exact").check(hidden)
    assert len(problems) == 1 and "bn_statistics='exact'" in problems[0]
    assert "knows_bn_statistics" in problems[0]
    eval_mode = observe(resnet, images, labels, bn_mode="eval", knows_bn_statistics=True)
    assert "eval mode" in get_attack("gradinversion", bn_statistics="exact").check(eval_mode)[0]
    granted = observe(resnet, images, labels, knows_bn_statistics=True)
    assert get_attack("gradinversion", bn_statistics="exact").check(granted) == []
    for target in ("running", "proxy"):
        assert get_attack("gradinversion", bn_statistics=target).check(hidden) == []
    assert get_attack("gradinversion", bn=0, bn_statistics="exact").check(hidden) == []
    with pytest.raises(GradleakError, match="bn_statistics must be one of"):
        get_attack("gradinversion", bn_statistics="batch")


def _target(observation, model, target: str, seed: int = 0):
    attack = get_attack("gradinversion", bn_statistics=target)
    view = observation.attacker_view()
    context = AttackContext(
        "gradinversion",
        view,
        model,
        observation.batch_size,
        attack.settings,
        generator=torch.Generator().manual_seed(seed),
    )
    simulator = ClientSimulator(model, batch_statistics=True, observation=view)
    return batchnorm_target(context, simulator), context.notes


def test_exact_proxy_and_running_targets_differ(resnet, batch):
    images, labels = batch
    observation = observe(resnet, images, labels, knows_bn_statistics=True)
    model = observation.build_model()
    exact, notes = _target(observation, model, "exact")
    assert "exact" in notes["bn_statistics"]
    running, _ = _target(observation, model, "running")
    proxy, notes = _target(observation, model, "proxy")
    again, _ = _target(observation, model, "proxy")
    other_seed, _ = _target(observation, model, "proxy", seed=1)
    names = batchnorm_names(model)
    for (mean, var), name in zip(exact, names, strict=True):
        assert torch.equal(mean, observation.bn_statistics[name][0])
        assert torch.equal(var, observation.bn_statistics[name][1])
    assert torch.equal(running[0][0], model.net.bn1.running_mean)

    def gap(a, b):
        pairs = zip(a, b, strict=True)
        return float(sum((m1 - m2).norm() + (v1 - v2).norm() for (m1, v1), (m2, v2) in pairs))

    assert gap(exact, running) > 1 and gap(exact, proxy) > 1 and gap(proxy, running) > 1
    assert gap(proxy, again) == 0  # seeded by the attack seed
    assert gap(proxy, other_seed) > 1
    # the proxy's images: as many as the batch, never from the test split's head (the private
    # batches of the experiments)
    drawn = notes["bn_statistics"].split(": ")[-1].split(", ")
    assert len(drawn) == len(images)
    if "test_jpeg" in drawn[0]:
        assert all(int(i.rsplit("-", 1)[1]) >= TEST_HOLD_OUT for i in drawn)
    # the true batch meets the exact target: its BN distance is (numerically) zero
    simulator = ClientSimulator(model, batch_statistics=True, observation=observation)
    with torch.no_grad():
        _, traced = simulator.simulate(images[None], labels[None])
    assert float(batchnorm_distance(traced, exact)[0]) < 1e-3
    assert float(batchnorm_distance(traced, running)[0]) > 1
    assert float(batchnorm_distance(traced, proxy)[0]) > 1


def test_attacks_run_with_each_target_and_estimate_a_hidden_batch_size(resnet, batch):
    images, labels = batch
    observation = observe(
        resnet, images[:1], labels[:1], knows_bn_statistics=True, knows_batch_size=False
    )
    assert "hides the batch size" in get_attack("gradinversion").check(observation)[0]
    for target in ("exact", "proxy", "running"):
        attack = get_attack("gradinversion", bn_statistics=target, estimate_batch_size=True)
        result = attack(observation, iterations=2, restarts=2)
        assert result.images.shape == (1, 3, 32, 32)
        assert result.settings["bn_statistics"] == target
        assert result.notes["batch_size"] == "estimated from the gradient: 1"
        assert (target == "running") == ("bn_statistics" not in result.notes)


# ---------------------------------------------------------------------- grids, sweeps, preset
def test_sweep_key_and_grid_axis(tmp_path):
    from gradleak.experiments.sweep import load_sweep

    path = tmp_path / "grid.toml"
    path.write_text(
        "[sweep]\nn_images = 1\nknows_bn_statistics = true\n"
        '[grid]\nmodel = ["lenet"]\nattack = ["bn_exact"]\n'
        '[attacks.bn_exact]\nattack = "gradinversion"\nbn_statistics = "exact"\n'
    )
    experiment = load_sweep(path)
    assert experiment.settings.knows_bn_statistics is True
    (case,) = list(experiment.cases(experiment.settings))
    assert case.observation.knows_bn_statistics is True
    path.write_text(
        path.read_text().replace("knows_bn_statistics = true", "knows_bn_statistics = 1")
    )
    with pytest.raises(GradleakError, match="knows_bn_statistics"):
        load_sweep(path)


def test_huang_preset_rows_and_overrides():
    from gradleak.experiments import RunOptions, get_preset

    experiment = get_preset("huang")
    assert "300 iterations" in experiment.description
    settings = RunOptions(iterations=5, n_images=4).apply(experiment.settings, "huang")
    cases = list(experiment.cases(settings))
    rows = len(settings.rows) + len(settings.defenses)
    assert len(cases) == rows * 5  # 4 images alone and one batch of 4
    assert {c.method.iterations for c in cases} == {5}
    by_row = {}
    for case in cases:
        by_row.setdefault(case.record["group"].rsplit(", B=", 1)[0], case)
    strongest = by_row["GradInversion: BN exact, labels known, B known"]
    assert strongest.observation.knows_bn_statistics and strongest.observation.knows_labels
    relaxed = by_row["GradInversion: BN inferred, labels recovered, B estimated"]
    observation = relaxed.observation
    assert not (observation.knows_bn_statistics or observation.knows_labels)
    assert not observation.knows_batch_size
    assert dict(relaxed.method.settings) == {
        "bn_statistics": "running",
        "estimate_batch_size": True,
    }
    defended = [c for c in cases if c.observation.defenses]
    assert {c.observation.defenses[0].name for c in defended} == {"prune", "noise", "clip"}
    with pytest.raises(GradleakError, match="unknown defense"):
        list(experiment.cases(dataclasses.replace(settings, defenses=("bogus:x=1",))))


def test_exact_row_without_granted_statistics_is_a_skipped_case(tmp_path, shared_dir):
    from gradleak.experiments import RunOptions, get_preset
    from gradleak.experiments.methods import run_case

    experiment = get_preset("huang")
    settings = RunOptions(iterations=2, n_images=1).apply(experiment.settings, "huang")
    case = next(iter(experiment.cases(settings)))
    assert dict(case.method.settings)["bn_statistics"] == "exact"
    hidden = dataclasses.replace(case.observation, knows_bn_statistics=False)
    record, _ = run_case(dataclasses.replace(case, observation=hidden), tmp_path)
    assert record["status"] == "skipped"
    assert "bn_statistics='exact'" in record["error"]
