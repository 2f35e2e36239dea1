"""The ``labels-sweep`` preset: one case per trial, resumable, on the shared MNIST and CIFAR-10."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments import methods as case_methods
from gradleak.experiments.label_sweep import LabelSweepSettings, batch_size_rows, label_rows

SETTINGS = LabelSweepSettings(trials=1, label_batch_sizes=(1, 8), batch_size_sweep=(1, 4))


def experiment():
    return dataclasses.replace(get_preset("labels-sweep"), settings=SETTINGS)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shared_dir):
    out = tmp_path_factory.mktemp("labels-sweep")
    return out, run_experiment(experiment(), out, RunOptions(threads=1))


def test_writes_one_case_per_trial(sweep):
    out, results = sweep
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
    assert {"preset", "settings", "versions", "cases", "summary"} <= set(results)
    assert results["preset"] == "labels-sweep"
    # 3 setups x (7 methods at B=1, 6 at B=8 + 2 batch-size cells), one trial each
    assert len(results["cases"]) == 3 * (7 + 6 + 2)
    for case in results["cases"]:
        assert {"id", "variant", "label_accuracy", "seconds", "batch_size", "status"} <= set(case)
        assert case["status"] == "done" and case.get("psnr") is None
        assert isinstance(case["seconds"], float)
    cases = {c["id"]: c for c in results["cases"]}
    bias8 = cases["mlp4/mnist/bias/B=8/t0"]
    assert bias8["variant"] == "bias" and bias8["model"] == "mlp4/mnist"
    assert bias8["label_accuracy"] == 1.0 and bias8["exact"]
    estimate = cases["mlp4/mnist/batch-size/B=4/t0"]
    assert estimate["variant"] == "batch-size estimate" and estimate["correct"]
    by_variant = results["summary"]["by_variant"]
    assert by_variant["idlg"]["n_cases"] == 3 and by_variant["batch-size estimate"]["n_cases"] == 6
    assert by_variant["batch-size estimate"]["label_accuracy"] is None
    rows = {(r["model"], r["batch_size"]): r for r in label_rows(results)}
    assert rows[("mlp4/mnist", 8)]["methods"]["bias"]["exact_batches"] == 1.0
    assert [r["exact_match"] for r in batch_size_rows(results)][:2] == [1.0, 1.0]
    table = (out / "table.md").read_text()
    assert "| mlp4/mnist | 8 | - |" in table and "| lenet/cifar10 | 1.0 (rank) |" in table


def test_rerun_resumes_without_recomputing(sweep, monkeypatch):
    out, results = sweep

    def fail(*args, **kwargs):
        raise AssertionError("a case was recomputed")

    monkeypatch.setattr(case_methods, "run_case", fail)
    again = run_experiment(experiment(), out, RunOptions(threads=1))
    assert again["cases"] == json.loads(json.dumps(results["cases"]))


def test_takes_no_budget():
    with pytest.raises(Exception, match="labels-sweep takes no --iterations"):
        run_experiment(get_preset("labels-sweep"), "unused", RunOptions(iterations=3))
