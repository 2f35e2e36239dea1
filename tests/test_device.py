"""Attacks on a GPU (``device=``): the same start and results as on the CPU, results back on
the CPU. The CUDA tests are skipped where torch sees no CUDA device; the errors are checked
everywhere."""

from __future__ import annotations

import pytest
import torch

from gradleak.attacks import get_attack
from gradleak.attacks.base import resolve_device
from gradleak.errors import GradleakError
from gradleak.models import build_model
from gradleak.threat import observe

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_unusable_devices_are_refused_by_name():
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(GradleakError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(GradleakError, match="torch sees no CUDA device"):
            resolve_device("cuda")
    with pytest.raises(GradleakError, match="runs on cpu or cuda"):
        resolve_device("meta")


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
def test_the_cli_runs_an_attack_on_cuda(bundled, tmp_path, monkeypatch, capsys):
    import json
    import sys

    from gradleak.cli import main
    from gradleak.threat import save_observation

    observation = observe(build_model("lenet", seed=0), bundled.images[:1], bundled.labels[:1])
    path = save_observation(observation, tmp_path / "obs.safetensors")
    monkeypatch.setattr(
        sys,
        "argv",
        ["gradleak", "attack", str(path), "--method", "auto", "--iterations", "5",
         "--device", "cuda", "--out", str(tmp_path / "out")],
    )  # fmt: skip
    try:
        main()
    except SystemExit as exit_:
        assert exit_.code in (None, 0), capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    done = [c for c in results["cases"] if c["status"] == "done"]
    assert {c["attack"] for c in done} >= {"idlg", "inverting_gradients", "rgap", "dip"}
