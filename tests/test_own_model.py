"""Your own model (``--model path/to/file.py:factory`` or ``package.module:factory``): observe
and attack it, and an observation file that never imports code by itself."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from clitools import call_main
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.models import build_model, custom, save_weights
from gradleak.threat import observe
from gradleak.threat.observation import load_observation, save_observation

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = "examples/own_model.py:make_net"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def write_factory(path: Path, body: str) -> Path:
    path.write_text("from torch import nn\n\n" + textwrap.dedent(body))
    return path


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root, where ``examples/own_model.py`` resolves."""
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def photo():
    return load_images("bundled", size=32, n=1)


def own_observation(path: Path, photo, spec: str = EXAMPLE) -> Path:
    model = build_model(spec, seed=0)
    return save_observation(observe(model, photo.images, photo.labels), path)


# ---------------------------------------------------------------------- the command line
def test_observe_then_attack_your_own_model(monkeypatch, capsys, in_repo, tmp_path):
    obs = tmp_path / "obs.safetensors"
    code, out, err = call_main(
        monkeypatch, capsys,
        "observe", "--model", EXAMPLE, "--images", "bundled", "--n-images", "1", "--out", obs,
    )  # fmt: skip
    assert code == 0, err
    with safe_open(str(obs), "pt") as handle:
        header = json.loads(handle.metadata()["gradleak"])
    config = header["model_config"]
    assert config["name"] == EXAMPLE and config["normalization"] == "none"
    assert config["factory_kwargs"] == {"num_classes": 10, "in_channels": 3}
    assert len(config["architecture"]) == 16 and len(header["weights_sha256"]) == 64

    # the file alone never names code to run: attack and analyze ask for the factory again
    message = (
        f"{obs}: its model was built by your own code '{EXAMPLE}'; name it again with "
        f"--model {EXAMPLE} (an observation file is data, not code)"
    )
    for command in (("attack", obs, "--out", tmp_path / "plain"), ("analyze", obs)):
        code, _, err = call_main(monkeypatch, capsys, *command)
        assert code == 2 and one_error_line(err) == f"error: {message}"
    assert not (tmp_path / "plain" / "results.json").exists()

    out = tmp_path / "att"
    code, _, err = call_main(
        monkeypatch, capsys,
        "attack", obs, "--model", EXAMPLE, "--method", "inverting_gradients",
        "--iterations", "200", "--restarts", "1", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert (out / "cases" / "inverting_gradients" / "reconstruction.safetensors").is_file()
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["status"] == "done" and case["label_accuracy"] == 1.0
    # Measured: 15.39 dB (astronaut, seed 0, 1 thread); the gray image scores 10.54 dB and the
    # photo's own mean colour 10.97 dB, so 13 dB means the gradient gave the image away.
    assert case["psnr"] >= 13.0, case["psnr"]


def test_observe_with_weights_and_normalization(monkeypatch, capsys, in_repo, tmp_path):
    trained = build_model(EXAMPLE, seed=5)
    weights = save_weights(trained, tmp_path / "trained.safetensors")
    obs = tmp_path / "obs.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys,
        "observe", "--model", EXAMPLE, "--images", "bundled", "--n-images", "1",
        "--weights", weights, "--normalization", "cifar10", "--out", obs,
    )  # fmt: skip
    assert code == 0, err
    loaded = load_observation(obs, model=EXAMPLE)
    assert loaded.model_config["normalization"] == "cifar10"
    assert loaded.model_config["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    for name, value in trained.net.state_dict().items():
        assert torch.equal(loaded.weights[name], value), name
    code, _, err = call_main(
        monkeypatch, capsys,
        "observe", "--model", EXAMPLE, "--images", "bundled", "--normalization", "mnist",
        "--out", tmp_path / "bad.safetensors",
    )  # fmt: skip
    assert code == 2 and "unknown normalization 'mnist'; choose one of" in one_error_line(err)


def test_a_different_factory_is_refused(monkeypatch, capsys, in_repo, tmp_path, photo):
    obs = own_observation(tmp_path / "obs.safetensors", photo)
    other = write_factory(
        tmp_path / "other.py",
        """
        def make_net(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
        """,
    )
    named = f"{other}:make_net"
    code, _, err = call_main(
        monkeypatch, capsys, "attack", obs, "--model", named, "--out", tmp_path / "att"
    )
    assert code == 2
    assert one_error_line(err) == (
        f"error: {obs}: observation was made with model '{EXAMPLE}', you named '{named}'"
    )
    # the spec may be written another way, if it is the same file
    assert load_observation(obs, model=f"./{EXAMPLE}").model_config["name"] == EXAMPLE


def test_a_changed_factory_is_refused_by_its_architecture(tmp_path, photo):
    source = tmp_path / "net.py"
    network = """
        def make_net(num_classes=10, in_channels=3):
            return nn.Sequential(
                nn.Conv2d(in_channels, {channels}, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                nn.Flatten(), nn.Linear({channels} * 4, num_classes),
            )
        """
    write_factory(source, network.format(channels=4))
    spec = f"{source}:make_net"
    obs = own_observation(tmp_path / "obs.safetensors", photo, spec)
    write_factory(source, network.format(channels=6))  # the user's code changed since
    with pytest.raises(GradleakError) as info:
        load_observation(obs, model=spec)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{obs}: {spec} now builds architecture ")
    assert "('0.bias' is [6] float32 here, [4] float32 in the observation)" in text


def test_tampered_weights_fail_the_fingerprint(in_repo, tmp_path, photo):
    obs = own_observation(tmp_path / "obs.safetensors", photo)
    with safe_open(str(obs), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(obs))
    tensors["weight/0.weight"][0, 0, 0, 0] += 1e-3
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    load_observation(obs, model=EXAMPLE)  # the untouched file is fine
    with pytest.raises(GradleakError, match="do not match the sha256 recorded") as info:
        load_observation(bad, model=EXAMPLE)
    assert str(info.value).startswith(f"{bad}: ") and "\n" not in str(info.value)
    assert "corrupt or was edited" in str(info.value)


def test_registry_observations_record_and_check_their_weights_too(tmp_path, photo):
    obs = save_observation(
        observe(build_model("lenet"), photo.images, photo.labels), tmp_path / "obs.safetensors"
    )
    assert load_observation(obs, model="lenet").model_config["name"] == "lenet"
    with pytest.raises(GradleakError, match="made with model 'lenet', you named 'mlp4'"):
        load_observation(obs, model="mlp4")
    tensors = load_file(str(obs))
    with safe_open(str(obs), "pt") as handle:
        metadata = handle.metadata()
    tensors["weight/fc.bias"][0] = 0.5
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(GradleakError, match="corrupt or was edited"):
        load_observation(tmp_path / "bad.safetensors")


def test_loading_never_imports_your_code(monkeypatch, tmp_path, photo):
    marker = tmp_path / "imported"
    source = write_factory(
        tmp_path / "marked.py",
        f"""
        from pathlib import Path

        Path({str(marker)!r}).touch()

        def make_net(num_classes=10):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
        """,
    )
    obs = own_observation(tmp_path / "obs.safetensors", photo, f"{source}:make_net")
    assert marker.exists()
    marker.unlink()
    monkeypatch.setattr(custom, "_LOADED", {})  # a fresh process: nothing imported yet
    with pytest.raises(GradleakError, match="an observation file is data, not code"):
        load_observation(obs)
    assert not marker.exists()
    load_observation(obs, model=f"{source}:make_net")
    assert marker.exists()


def test_module_path_form(monkeypatch, tmp_path, photo):
    write_factory(
        tmp_path / "gradleak_test_nets.py",
        """
        def tiny():
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        """,
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "gradleak_test_nets", raising=False)
    spec = "gradleak_test_nets:tiny"
    model = build_model(spec)
    assert model.config["factory_kwargs"] == {} and model.config["name"] == spec
    obs = own_observation(tmp_path / "obs.safetensors", photo, spec)
    loaded = load_observation(obs, model=spec)
    assert torch.equal(loaded.build_model().net[1].weight, model.net[1].weight)
    monkeypatch.delitem(sys.modules, "gradleak_test_nets")


# ---------------------------------------------------------------------- one-line errors
FACTORIES = """
import torch

def wrong_logits(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))

def raises(num_classes):
    raise RuntimeError("no GPU here,\\n sorry")

def not_a_module():
    return "a network"

def fails_forward():
    return nn.Linear(5, 10)

def no_width(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

NOT_CALLABLE = 3
"""


@pytest.mark.parametrize(
    ("spec", "width", "message"),
    [
        (
            "{dir}/nets.py:wrong_logits",
            None,
            "the network of {dir}/nets.py:wrong_logits maps a (1, 3, 32, 32) input to (1, 7), "
            "not (1, 10) logits (num_classes=10)",
        ),
        (
            "{dir}/nets.py:raises",
            None,
            "{dir}/nets.py:raises(num_classes=10) raised RuntimeError: no GPU here, sorry",
        ),
        (
            "{dir}/nets.py:not_a_module",
            None,
            "{dir}/nets.py:not_a_module() returned a str, not a torch.nn.Module",
        ),
        ("{dir}/nets.py:fails_forward", None, "fails on a (1, 3, 32, 32) input: RuntimeError"),
        ("{dir}/nets.py:no_width", 8, "{dir}/nets.py:no_width takes no width argument"),
        ("{dir}/nets.py:NOT_CALLABLE", None, "nets.py:NOT_CALLABLE is a int, not a callable"),
        ("{dir}/nets.py:missing", None, "nets.py has no 'missing'"),
        ("{dir}/absent.py:make_net", None, "model file {dir}/absent.py does not exist"),
        ("{dir}/nets.txt:make_net", None, "is neither a registered model nor"),
        ("no_such_module_xyz:make_net", None, "no module named 'no_such_module_xyz'"),
        ("nets:", None, "is neither a registered model nor package.module:factory"),
    ],
    ids=[
        "logits", "raises", "not-module", "forward", "width", "not-callable", "attribute",
        "no-file", "not-py", "no-module", "format",
    ],
)  # fmt: skip
def test_factory_problems_are_one_line_errors(tmp_path, spec, width, message):
    (tmp_path / "nets.py").write_text("from torch import nn\n" + FACTORIES)
    spec, message = spec.format(dir=tmp_path), message.format(dir=tmp_path)
    with pytest.raises(GradleakError) as info:
        build_model(spec, width=width)
    assert message in str(info.value) and "\n" not in str(info.value)
