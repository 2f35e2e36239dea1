"""The ``labels-sweep`` preset: one case per cell, resumable, on the shared MNIST and CIFAR-10."""

from __future__ import annotations

import json

import pytest

from gradleak.experiments import get_preset, label_sweep
from gradleak.experiments.label_sweep import run_label_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_dir):
    out = tmp_path_factory.mktemp("labels-sweep")
    return out, run_label_sweep(out, trials=1, label_sizes=(1, 8), batch_size_sweep=(1, 4))


def test_writes_one_case_per_cell(sweep):
    out, results = sweep
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert {"preset", "settings", "versions", "cases", "summary"} <= set(results)
    assert results["preset"] == "labels-sweep"
    # 3 setups x (7 methods at B=1, 6 at B=8 + 2 batch-size cells)
    assert len(results["cases"]) == 3 * (7 + 6 + 2)
    for case in results["cases"]:
        assert {"id", "variant", "psnr", "ssim", "label_accuracy", "seconds", "batch_size"} <= set(
            case
        )
        assert case["psnr"] is None and case["ssim"] is None
        assert isinstance(case["seconds"], float)
    cases = {c["id"]: c for c in results["cases"]}
    bias8 = cases["mlp4/mnist/bias/B=8"]
    assert bias8["variant"] == "bias" and bias8["model"] == "mlp4/mnist"
    assert bias8["label_accuracy"] == 1.0 and bias8["exact_batches"] == 1.0
    estimate = cases["mlp4/mnist/batch-size/B=4"]
    assert estimate["variant"] == "batch-size estimate" and estimate["label_accuracy"] is None
    assert estimate["exact_match"] == 1.0
    by_variant = results["summary"]["by_variant"]
    assert by_variant["idlg"]["n_cases"] == 3 and by_variant["batch-size estimate"]["n_cases"] == 6
    assert by_variant["batch-size estimate"]["label_accuracy"] is None
    table = (out / "table.md").read_text()
    assert "| mlp4/mnist | 8 | - |" in table and "| lenet/cifar10 | 1.0 (rank) |" in table


def test_rerun_resumes_without_recomputing(sweep, monkeypatch):
    out, results = sweep

    def fail(*args, **kwargs):
        raise AssertionError("a cell was recomputed")

    monkeypatch.setattr(label_sweep, "observe", fail)
    monkeypatch.setattr(label_sweep, "load_images", fail)
    again = run_label_sweep(out, trials=1, label_sizes=(1, 8), batch_size_sweep=(1, 4))
    assert again["cases"] == json.loads(json.dumps(results["cases"]))


def test_is_a_registered_sweep_preset():
    preset = get_preset("labels-sweep")
    module, _, function = preset.runner.partition(":")
    assert module == label_sweep.__name__ and function == "run_label_sweep"
