"""Tests for gradleak.threat: simulating a client step, the observation file and its checks."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from gradleak.data import load_images, shared_data_dir
from gradleak.errors import GradleakError
from gradleak.models import build_model
from gradleak.threat import GroundTruth, Observation, observe
from gradleak.threat.observation import load_observation, save_observation, truth_path

SHARED = shared_data_dir(required=False)


# ---------------------------------------------------------------------- fixtures and helpers
def reference_gradients(model, images, labels, bn_mode):
    """Plain autograd: gradient of the mean cross-entropy, on a copy (buffers may change)."""
    ref = copy.deepcopy(model)
    ref.train(bn_mode == "train")
    loss = nn.functional.cross_entropy(ref(images), labels)
    names, params = zip(*ref.net.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    return dict(zip(names, grads, strict=True)), float(loss.detach())


def state_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def assert_tensor_dicts_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def lenet_observation(images, labels, **kwargs) -> Observation:
    return observe(build_model("lenet", seed=0), images, labels, **kwargs)


def resave(src, dst, edit) -> None:
    """Copy an observation file, letting ``edit(tensors)`` tamper with its tensors."""
    with safe_open(str(src), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)


def resave_header(src, dst, edit) -> None:
    """Copy an observation file, letting ``edit(header)`` tamper with its JSON header."""
    with safe_open(str(src), "pt") as handle:
        header = json.loads(handle.metadata()["gradleak"])
    edit(header)
    save_file(load_file(str(src)), str(dst), metadata={"gradleak": json.dumps(header)})


@pytest.fixture
def saved_lenet(tmp_path, bundled):
    """A valid LeNet observation of two bundled photos, saved under tmp_path."""
    observation = lenet_observation(bundled.images[:2], bundled.labels[:2], ids=bundled.ids[:2])
    return save_observation(observation, tmp_path / "obs.safetensors")


# ---------------------------------------------------------------------- observe
def test_observe_gradient_is_autograd_of_mean_cross_entropy_bundled(bundled):
    model = build_model("lenet", seed=0)
    expected, loss = reference_gradients(model, bundled.images, bundled.labels, "train")

    obs = observe(model, bundled.images, bundled.labels, ids=bundled.ids)

    assert list(obs.gradients) == [n for n, _ in model.net.named_parameters()]
    for name, grad in expected.items():
        assert torch.equal(obs.gradients[name], grad), name
    assert obs.loss == pytest.approx(loss, rel=1e-6)
    assert obs.batch_size == len(bundled) == 8
    assert torch.equal(obs.labels, bundled.labels)
    assert obs.kind == "gradient" and obs.bn_mode == "train"
    assert obs.model_config == model.config
    assert torch.equal(obs.truth.images, bundled.images)
    assert torch.equal(obs.truth.labels, bundled.labels)
    assert obs.truth.ids == bundled.ids


def test_observe_gradient_is_the_batch_average(bundled):
    """An FL client sends the mean gradient: the batch's equals the mean of per-image ones."""
    model = build_model("lenet", seed=0)
    images, labels = bundled.images[:4], bundled.labels[:4]
    batch = observe(model, images, labels)
    singles = [observe(model, images[i : i + 1], labels[i : i + 1]) for i in range(4)]
    for name, grad in batch.gradients.items():
        mean = torch.stack([s.gradients[name] for s in singles]).mean(0)
        torch.testing.assert_close(grad, mean, rtol=1e-5, atol=1e-7)
        assert not torch.equal(singles[0].gradients[name], singles[1].gradients[name])


def test_observe_gradient_is_autograd_on_cifar10_lenet(cifar10):
    model = build_model("lenet", seed=1)
    expected, _ = reference_gradients(model, cifar10.images, cifar10.labels, "train")
    obs = observe(model, cifar10.images, cifar10.labels)
    for name, grad in expected.items():
        assert torch.equal(obs.gradients[name], grad), name


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
def test_observe_gradient_is_autograd_on_cifar10_resnet20(cifar10, bn_mode):
    model = build_model("resnet20", seed=7)
    images, labels = cifar10.images[:8], cifar10.labels[:8]
    expected, loss = reference_gradients(model, images, labels, bn_mode)
    other, _ = reference_gradients(model, images, labels, "eval" if bn_mode == "train" else "train")

    obs = observe(model, images, labels, bn_mode=bn_mode)

    assert obs.bn_mode == bn_mode
    assert obs.loss == pytest.approx(loss, rel=1e-6)
    for name, grad in expected.items():
        assert torch.equal(obs.gradients[name], grad), name
    # the mode matters for a BatchNorm network: the other mode's gradient is different
    assert not all(torch.equal(obs.gradients[n], g) for n, g in other.items())


@pytest.mark.parametrize("model_name", ["lenet", "resnet20"])
def test_observe_records_pre_step_weights(cifar10, model_name):
    model = build_model(model_name, seed=3)
    images, labels = cifar10.images[:4], cifar10.labels[:4]
    before = state_snapshot(model)

    obs = observe(model, images, labels, bn_mode="train")

    assert_tensor_dicts_equal(obs.weights, before)
    assert_tensor_dicts_equal(state_snapshot(model), before)  # observe takes no step
    # the client now takes its SGD step; the observation keeps what the server sent
    with torch.no_grad():
        for name, p in model.net.named_parameters():
            p -= 0.5 * obs.gradients[name]
    last = "fc.weight" if model_name == "lenet" else "linear.weight"
    assert not torch.equal(model.net.state_dict()[last], before[last])
    assert_tensor_dicts_equal(obs.weights, before)
    # the server's copy rebuilt from the observation reproduces the client's gradient exactly
    rebuilt = obs.build_model()
    assert_tensor_dicts_equal(state_snapshot(rebuilt), before)
    again = observe(rebuilt, images, labels, bn_mode="train")
    assert_tensor_dicts_equal(again.gradients, obs.gradients)


def test_observe_leaves_batchnorm_statistics_and_mode_unchanged(cifar10):
    model = build_model("resnet20", seed=5).eval()
    images, labels = cifar10.images[:8], cifar10.labels[:8]
    buffers = {k: v.clone() for k, v in model.net.named_buffers()}
    assert any(k.endswith("running_mean") for k in buffers)
    # sanity: a plain train-mode forward pass does move the running statistics
    probe = copy.deepcopy(model).train()
    probe(images)
    moved = dict(probe.net.named_buffers())
    assert not torch.equal(moved["bn1.running_mean"], buffers["bn1.running_mean"])
    assert int(moved["bn1.num_batches_tracked"]) == int(buffers["bn1.num_batches_tracked"]) + 1

    obs = observe(model, images, labels, bn_mode="train")

    for name, value in model.net.named_buffers():
        assert torch.equal(value, buffers[name]), name
        assert torch.equal(obs.weights[name], buffers[name]), name
    assert model.training is False  # the caller's mode is restored


def test_observe_rejects_images_that_do_not_fit_the_model(bundled):
    model = build_model("lenet", seed=0)  # 3 x 32 x 32
    small = load_images("bundled", size=28, n=2)
    with pytest.raises(GradleakError, match=r"\[3, 28, 28\] do not fit model 'lenet'"):
        observe(model, small.images, small.labels)
    gray = load_images("bundled", size=32, channels=1, n=2)
    with pytest.raises(GradleakError, match=r"\[1, 32, 32\] do not fit model 'lenet'"):
        observe(model, gray.images, gray.labels)
    with pytest.raises(GradleakError, match=r"\(B, C, H, W\) batch"):
        observe(model, bundled.images[0], bundled.labels[:1])


def test_observe_rejects_bad_labels_and_bn_mode(bundled):
    model = build_model("lenet", seed=0)
    images = bundled.images[:2]
    with pytest.raises(GradleakError, match="3 labels for 2 images"):
        observe(model, images, torch.tensor([0, 1, 2]))
    with pytest.raises(GradleakError, match=r"labels must lie in \[0, 10\)"):
        observe(model, images, torch.tensor([0, 10]))
    with pytest.raises(GradleakError, match=r"labels must lie in \[0, 10\)"):
        observe(model, images, torch.tensor([-1, 0]))
    with pytest.raises(GradleakError, match="bn_mode"):
        observe(model, images, bundled.labels[:2], bn_mode="training")


def test_observe_rejects_an_empty_batch():
    model = build_model("lenet", seed=0)
    with pytest.raises(GradleakError):
        observe(model, torch.empty(0, 3, 32, 32), torch.empty(0, dtype=torch.long))


# ---------------------------------------------------------------------- attacker view
def test_attacker_view_drops_truth_and_hides_labels(bundled):
    hidden = lenet_observation(
        bundled.images[:2], bundled.labels[:2], knows_labels=False, knows_batch_size=False
    )
    view = hidden.attacker_view()
    assert view.truth is None
    assert view.labels is None
    assert view.known_batch_size is None
    assert_tensor_dicts_equal(view.gradients, hidden.gradients)
    # the original keeps what it recorded, for scoring
    assert hidden.truth is not None and torch.equal(hidden.labels, bundled.labels[:2])

    known = lenet_observation(bundled.images[:2], bundled.labels[:2])
    view = known.attacker_view()
    assert view.truth is None
    assert torch.equal(view.labels, bundled.labels[:2])
    assert view.known_batch_size == 2


# ---------------------------------------------------------------------- files
def _lenet_observed(bundled) -> Observation:
    obs = lenet_observation(
        bundled.images[:3],
        bundled.labels[:3],
        bn_mode="eval",
        knows_labels=False,
        knows_batch_size=False,
        ids=bundled.ids[:3],
        metadata={"source": "bundled", "seed": 0, "note": ["a", 1]},
    )
    obs.defense = {"name": "none", "sigma": 0.0}
    return obs


def _resnet20_manual(cifar10) -> Observation:
    """A BatchNorm observation built by hand (weights include int64 num_batches_tracked)."""
    model = build_model("resnet20", seed=11)
    images, labels = cifar10.images[:2], cifar10.labels[:2]
    grads, loss = reference_gradients(model, images, labels, "train")
    return Observation(
        model_config=dict(model.config),
        weights=state_snapshot(model),
        gradients=grads,
        batch_size=2,
        labels=labels.clone(),
        bn_mode="train",
        loss=loss,
        truth=GroundTruth(images.clone(), labels.clone(), cifar10.ids[:2]),
    )


@pytest.mark.parametrize("which", ["lenet-observed", "resnet20-manual"])
def test_save_load_round_trip_is_bit_exact(tmp_path, request, which):
    if which == "lenet-observed":
        obs = _lenet_observed(request.getfixturevalue("bundled"))
    else:
        obs = _resnet20_manual(request.getfixturevalue("cifar10"))
    path = save_observation(obs, tmp_path / "sub" / "obs.safetensors")

    loaded = load_observation(path)

    assert_tensor_dicts_equal(loaded.weights, obs.weights)
    assert_tensor_dicts_equal(loaded.gradients, obs.gradients)
    assert loaded.labels.dtype == torch.int64 and torch.equal(loaded.labels, obs.labels)
    assert loaded.loss == obs.loss  # exact float
    for attr in ("model_config", "batch_size", "bn_mode", "knows_labels", "knows_batch_size"):
        assert getattr(loaded, attr) == getattr(obs, attr), attr
    assert (loaded.kind, loaded.defense, loaded.metadata) == (obs.kind, obs.defense, obs.metadata)
    assert torch.equal(loaded.truth.images, obs.truth.images)
    assert loaded.truth.images.dtype == obs.truth.images.dtype
    assert torch.equal(loaded.truth.labels, obs.truth.labels)
    assert loaded.truth.ids == obs.truth.ids


def test_truth_is_stored_apart_from_the_observation(tmp_path, bundled):
    obs = _lenet_observed(bundled)
    path = save_observation(obs, tmp_path / "obs.safetensors")
    truth_file = truth_path(path)
    assert truth_file == tmp_path / "obs.truth.safetensors"
    assert truth_file.is_file()

    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        header_text = handle.metadata()["gradleak"]
        main = {k: handle.get_tensor(k) for k in keys}
    assert keys and all(k.startswith(("weight/", "grad/")) or k == "labels" for k in keys)
    images = obs.truth.images
    for key, tensor in main.items():
        assert tuple(tensor.shape) != tuple(images.shape), key
        assert tensor.numel() != images.numel() or not torch.equal(
            tensor.flatten(), images.flatten()
        )
    header = json.loads(header_text)
    assert header["format"] == "gradleak.observation/1"
    assert "truth" not in header and "images" not in header
    assert not any(image_id in header_text for image_id in obs.truth.ids)

    with safe_open(str(truth_file), "pt") as handle:
        truth_header = json.loads(handle.metadata()["gradleak"])
        assert sorted(handle.keys()) == ["images", "labels"]
    assert truth_header["format"] == "gradleak.ground_truth/1"
    assert truth_header["evaluation_only"] is True

    assert load_observation(path, with_truth=False).truth is None
    # sharing the attacker's view over the same path removes the stale private file
    save_observation(obs.attacker_view(), path)
    assert not truth_file.exists()
    assert load_observation(path).truth is None


def _wrong_shape(t):
    t["grad/fc.weight"] = t["grad/fc.weight"][:, :100].contiguous()


def _missing(t):
    del t["grad/fc.bias"]


def _unexpected(t):
    t["grad/extra.weight"] = torch.zeros(3)


def _nan(t):
    t["grad/body.0.weight"][0, 0, 0, 0] = float("nan")


def _inf(t):
    t["grad/fc.bias"][3] = float("inf")


def _weight_shape(t):
    t["weight/body.2.weight"] = torch.zeros(12, 12, 3, 3)


def _labels(t):
    t["labels"] = torch.zeros(3, dtype=torch.int64)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _wrong_shape,
            r"do not fit model 'lenet': 'fc.weight' has shape \[10, 100\], the model expects "
            r"\[10, 768\]",
        ),
        (_missing, r"do not fit model 'lenet': missing 'fc.bias', unexpected none"),
        (_unexpected, r"missing none, unexpected 'extra.weight'"),
        (_nan, r"gradient 'body.0.weight' contains NaN"),
        (_inf, r"gradient 'fc.bias' contains NaN or inf"),
        (
            _weight_shape,
            r"weights do not fit the model: 'body.2.weight' has shape \[12, 12, 3, 3\]",
        ),
        (_labels, r"labels must be 2 int64 values, got shape \[3\]"),
    ],
    ids=["wrong-shape", "missing-key", "unexpected-key", "nan", "inf", "weight-shape", "labels"],
)
def test_load_rejects_tampered_tensors(tmp_path, saved_lenet, edit, message):
    load_observation(saved_lenet)  # the untampered file is fine
    bad = tmp_path / "bad.safetensors"
    resave(saved_lenet, bad, edit)
    with pytest.raises(GradleakError, match=message) as info:
        load_observation(bad)
    assert "bad.safetensors" in str(info.value)
    assert "\n" not in str(info.value)


def test_load_rejects_tampered_observation_objects(tmp_path, bundled):
    obs = lenet_observation(bundled.images[:1], bundled.labels[:1])
    obs.gradients["fc.bias"] = torch.full((10,), float("nan"))
    save_observation(obs, tmp_path / "nan.safetensors")
    with pytest.raises(GradleakError, match="'fc.bias' contains NaN"):
        load_observation(tmp_path / "nan.safetensors")

    # gradients of a narrower LeNet: same parameter names, other shapes
    obs = lenet_observation(bundled.images[:1], bundled.labels[:1])
    narrow = observe(build_model("lenet", width=6), bundled.images[:1], bundled.labels[:1])
    assert narrow.gradients.keys() == obs.gradients.keys()
    obs.gradients = narrow.gradients
    save_observation(obs, tmp_path / "misfit.safetensors")
    with pytest.raises(GradleakError, match=r"'body.0.weight' has shape \[6, 3, 5, 5\]"):
        load_observation(tmp_path / "misfit.safetensors")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h.update(format="gradleak.observation/99"), "expected a gradleak.observation/1"),
        (lambda h: h.update(kind="fedavg"), "kind 'fedavg' is not supported"),
        (lambda h: h.pop("knows_labels"), r"malformed observation header \('knows_labels'\)"),
        (lambda h: h.update(bn_mode="sometimes"), "bn_mode must be one of"),
        (lambda h: h.update(batch_size=5), r"labels must be 5 int64 values, got shape \[2\]"),
        (lambda h: h["model_config"].update(name="vgg"), "unknown model 'vgg'"),
    ],
    ids=["format", "kind", "missing-field", "bn-mode", "batch-size", "model-name"],
)
def test_load_rejects_tampered_headers(tmp_path, saved_lenet, edit, message):
    bad = tmp_path / "bad.safetensors"
    resave_header(saved_lenet, bad, edit)
    with pytest.raises(GradleakError, match=message):
        load_observation(bad)


def test_load_rejects_a_model_config_with_unknown_keys(tmp_path, saved_lenet):
    bad = tmp_path / "bad.safetensors"
    resave_header(saved_lenet, bad, lambda h: h["model_config"].update(depth=3))
    with pytest.raises(GradleakError, match="bad.safetensors"):
        load_observation(bad)


def test_load_rejects_a_header_that_is_not_an_object(tmp_path, saved_lenet):
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(saved_lenet)), str(bad), metadata={"gradleak": "[1, 2]"})
    with pytest.raises(GradleakError, match="bad.safetensors"):
        load_observation(bad)


def test_load_rejects_a_truth_file_without_images(tmp_path, saved_lenet):
    truth = truth_path(saved_lenet)
    with safe_open(str(truth), "pt") as handle:
        metadata = handle.metadata()
        labels = handle.get_tensor("labels")
    save_file({"labels": labels}, str(truth), metadata=metadata)
    with pytest.raises(GradleakError, match="truth"):
        load_observation(saved_lenet)


def test_load_rejects_files_that_are_not_observations(tmp_path, saved_lenet):
    noise = tmp_path / "noise.safetensors"
    generator = torch.Generator().manual_seed(0)
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=generator).byte().numpy().tobytes())
    with pytest.raises(GradleakError, match="noise.safetensors is not a valid safetensors file"):
        load_observation(noise)

    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(GradleakError, match="not a valid safetensors file"):
        load_observation(empty)

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(
        GradleakError, match="plain.safetensors is a safetensors file but not a gradleak"
    ):
        load_observation(plain)

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(GradleakError, match="not a gradleak file"):
        load_observation(other)

    corrupt_json = tmp_path / "json.safetensors"
    save_file({"x": torch.zeros(2)}, str(corrupt_json), metadata={"gradleak": "{not json"})
    with pytest.raises(GradleakError, match="corrupt JSON header"):
        load_observation(corrupt_json)

    with pytest.raises(
        GradleakError,
        match="expected a gradleak.observation/1 file, found 'gradleak.ground_truth/1'",
    ):
        load_observation(truth_path(saved_lenet))

    with pytest.raises(GradleakError, match="no such file"):
        load_observation(tmp_path / "missing.safetensors")
