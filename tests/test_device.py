"""Devices: ``--device auto|cpu|cuda|mps`` on every command, errors that name the device, and
results on the CPU identical whatever the flag says. The CUDA tests are skipped where torch sees
no CUDA device; everything else runs on any machine.
"""

from __future__ import annotations

import json

import pytest
import torch
from clitools import call_main

from gradleak.attacks import get_attack
from gradleak.devices import mps_available, resolve_device, to_device
from gradleak.errors import GradleakError
from gradleak.models import build_model
from gradleak.threat import load_observation, observe, save_observation

COMMANDS = (
    "demo", "run", "sweep", "observe", "attack", "analyze", "train-prior", "train-inverter",
)  # fmt: skip
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_unusable_devices_are_refused_by_name():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(GradleakError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GradleakError, match="device 'cuda': torch sees no CUDA device"):
            resolve_device("cuda")
    if not mps_available():
        with pytest.raises(GradleakError, match="device 'mps': torch sees no MPS"):
            resolve_device("mps")
    with pytest.raises(GradleakError, match="runs on cpu, cuda or mps"):
        resolve_device("meta")


def test_auto_is_the_best_device_torch_sees():
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("AUTO").type == expected


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_a_device_defaulting_to_auto(monkeypatch, capsys, command):
    code, out, _ = call_main(monkeypatch, capsys, command, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "--device" in text and "mps" in text and "default: auto" in text


@pytest.fixture(scope="module")
def observation_file(bundled, tmp_path_factory):
    observation = observe(build_model("lenet", seed=0), bundled.images[:1], bundled.labels[:1])
    return save_observation(observation, tmp_path_factory.mktemp("obs") / "obs.safetensors")


@pytest.mark.parametrize(
    "args",
    [
        ("run", "demo", "--out", "{tmp}/run"),
        ("attack", "{obs}", "--out", "{tmp}/attack"),
        ("analyze", "{obs}"),
        ("observe", "--model", "lenet", "--images", "bundled", "--out", "{tmp}/o.safetensors"),
        ("train-prior", "--images", "bundled", "--out", "{tmp}/g.safetensors"),
        ("train-inverter", "--model", "lenet", "--images", "bundled", "--out", "{tmp}/i"),
    ],
    ids=lambda args: args[0],
)
@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_unusable_device_is_one_error_line_naming_it(
    monkeypatch, capsys, tmp_path, observation_file, args, device
):
    if resolve_device("auto").type == device:
        pytest.skip(f"this machine has {device}")
    args = [a.format(tmp=tmp_path, obs=observation_file) for a in args]
    code, _, err = call_main(monkeypatch, capsys, *args, "--device", device)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"device '{device}'" in lines[0]
    assert not (tmp_path / "run" / "results.json").exists()


@pytest.mark.parametrize(("attack", "restarts"), [("inverting_gradients", 2), ("dlg", 1)])
def test_an_attack_on_the_cpu_is_the_same_whatever_the_flag_says(bundled, attack, restarts):
    observation = observe(build_model("lenet", seed=0), bundled.images[:2], bundled.labels[:2])
    run = get_attack(attack)
    default = run(observation, iterations=3, restarts=restarts, seed=1)
    flags = ["cpu", torch.device("cpu")]
    if resolve_device("auto").type == "cpu":
        flags.append("auto")
    for device in flags:
        again = run(observation, iterations=3, restarts=restarts, seed=1, device=device)
        assert torch.equal(again.images, default.images), device
        assert torch.equal(again.labels, default.labels), device
        assert again.history == default.history, device
        assert all(map(torch.equal, again.frames, default.frames)), device


def test_the_callers_model_stays_on_its_device(bundled):
    model = build_model("lenet", seed=0)
    observation = observe(model, bundled.images[:1], bundled.labels[:1])
    server = observation.build_model()
    get_attack("inverting_gradients")(observation, iterations=1, model=server, device="cpu")
    assert all(p.device.type == "cpu" for p in server.parameters())


def test_observe_and_attack_on_the_cpu_are_the_same_with_auto(
    monkeypatch, capsys, tmp_path, observation_file
):
    if resolve_device("auto").type != "cpu":
        pytest.skip("auto is an accelerator here")
    paths = []
    for device in ("cpu", "auto"):
        path = tmp_path / f"{device}.safetensors"
        code, _, err = call_main(
            monkeypatch, capsys, "observe", "--model", "lenet", "--images", "bundled",
            "--n-images", "2", "--out", path, "--device", device,
        )  # fmt: skip
        assert code == 0, err
        paths.append(path)
    cpu, auto = (load_observation(p) for p in paths)
    for name, value in cpu.gradients.items():
        assert torch.equal(value, auto.gradients[name]), name
    assert torch.equal(cpu.truth.images, auto.truth.images)
    code, _, err = call_main(
        monkeypatch, capsys, "attack", observation_file, "--method", "inverting_gradients",
        "--iterations", "2", "--out", tmp_path / "attack",
    )  # fmt: skip
    assert code == 0, err
    (case,) = json.loads((tmp_path / "attack" / "results.json").read_text())["cases"]
    assert case["device"] == "cpu"


def test_training_on_the_cpu_is_the_same_with_the_device_flag(bundled, tmp_path):
    from gradleak.generative import train_generator
    from gradleak.learned import train_inverter

    tiny = {"steps": 2, "latent_dim": 8, "width": 4, "batch": 8, "checkpoint": tmp_path / "c"}
    a = train_generator(bundled.images, out=tmp_path / "a.safetensors", **tiny)
    assert not (tmp_path / "c").exists()  # the checkpoint goes once the generator is written
    b = train_generator(bundled.images, out=tmp_path / "b.safetensors", device="cpu", **tiny)
    assert all(map(torch.equal, a.state_dict().values(), b.state_dict().values()))
    assert all(p.device.type == "cpu" for p in b.parameters())
    model = build_model("lenet", seed=0)
    tiny = {"steps": 2, "batch_sizes": (1, 2), "hash_dim": 32, "hidden": 8, "minibatch": 4}
    tiny["checkpoint"] = False
    c = train_inverter(model, bundled, out=tmp_path / "c.safetensors", **tiny)
    d = train_inverter(model, bundled, out=tmp_path / "d.safetensors", device="cpu", **tiny)
    assert all(map(torch.equal, c.net.state_dict().values(), d.net.state_dict().values()))
    assert torch.equal(c.encoder.layer_scale, d.encoder.layer_scale)
    assert c.card["held_out_scores"] == d.card["held_out_scores"]


def test_to_device_moves_every_tensor_of_an_observation(bundled):
    observation = observe(build_model("lenet", seed=0), bundled.images[:1], bundled.labels[:1])
    moved = to_device(observation, torch.device("cpu"))
    assert moved is not observation and moved.truth is not observation.truth
    assert moved.gradients.keys() == observation.gradients.keys()
    assert torch.equal(moved.truth.images, observation.truth.images)
    assert moved.metadata == observation.metadata


@cuda
@pytest.mark.parametrize(
    ("model", "attack", "restarts"),
    [
        ("lenet", "dlg", 1),  # L-BFGS, joint labels, autograd path
        ("lenet", "inverting_gradients", 2),  # signed Adam, vmapped restarts
        ("resnet20", "gradinversion", 2),  # BatchNorm statistics, group consistency
        ("lenet", "dip", 1),  # an untrained decoder's weights
    ],
)
def test_an_attack_on_cuda_matches_the_cpu(bundled, model, attack, restarts):
    observation = observe(build_model(model, seed=0), bundled.images[:2], bundled.labels[:2])
    run = get_attack(attack)
    on_cpu = run(observation, iterations=8, restarts=restarts, seed=0)
    on_gpu = run(observation, iterations=8, restarts=restarts, seed=0, device="cuda")
    assert on_gpu.images.device.type == "cpu" and on_gpu.frames[0].device.type == "cpu"
    assert on_gpu.images.shape == on_cpu.images.shape
    first = on_cpu.history[0]
    assert on_gpu.history[0] == pytest.approx(first, rel=1e-3, abs=1e-6)  # the same start
    assert on_gpu.gradient_distance <= first  # and it optimizes
    assert on_gpu.gradient_distance == pytest.approx(on_cpu.gradient_distance, rel=0.2, abs=1e-3)


@cuda
def test_the_cli_runs_an_attack_on_cuda(monkeypatch, capsys, tmp_path, observation_file):
    code, _, err = call_main(
        monkeypatch, capsys, "attack", observation_file, "--method", "auto", "--iterations", "5",
        "--device", "cuda", "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    done = [c for c in results["cases"] if c["status"] == "done"]
    assert {c["attack"] for c in done} >= {"idlg", "inverting_gradients", "rgap", "dip"}
    assert {c["device"] for c in results["cases"]} == {"cuda"}


@cuda
def test_observe_and_training_on_cuda_write_cpu_files(monkeypatch, capsys, bundled, tmp_path):
    from gradleak.generative import load_generator, train_generator
    from gradleak.learned import load_inverter, train_inverter

    for device in ("cpu", "cuda"):
        code, _, err = call_main(
            monkeypatch, capsys, "observe", "--model", "resnet20", "--images", "bundled",
            "--n-images", "2", "--out", tmp_path / f"{device}.safetensors", "--device", device,
        )  # fmt: skip
        assert code == 0, err
    cpu, gpu = (load_observation(tmp_path / f"{d}.safetensors") for d in ("cpu", "cuda"))
    for name, value in cpu.gradients.items():
        assert gpu.gradients[name].device.type == "cpu"
        assert torch.allclose(gpu.gradients[name], value, rtol=1e-3, atol=1e-5), name
    tiny = {"steps": 3, "latent_dim": 8, "width": 4, "batch": 8}
    generator = train_generator(
        bundled.images, out=tmp_path / "g.safetensors", device="cuda", **tiny
    )
    assert all(p.device.type == "cpu" for p in generator.parameters())
    load_generator(tmp_path / "g.safetensors").sample(2)
    settings = {"steps": 3, "batch_sizes": (1, 2), "hash_dim": 32, "hidden": 8, "minibatch": 4}
    for name in ("lenet", "resnet20"):  # per-sample hashes; train-mode BatchNorm batches
        model = build_model(name, seed=0)
        out = tmp_path / f"{name}.safetensors"
        inverter = train_inverter(model, bundled, out=out, device="cuda", **settings)
        assert all(p.device.type == "cpu" for p in inverter.net.parameters())
        observation = observe(model, bundled.images[:1], bundled.labels[:1])
        assert load_inverter(out).invert(observation).shape == (1, 3, 32, 32)
