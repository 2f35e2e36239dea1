"""The studies that train the attacker's networks first: learned-inversion and prior-shift.

Tiny budgets: these check that every part of a study runs, is recorded and resumes; the measured
quality lives in benchmarks/learned_inversion.py and benchmarks/prior_shift.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments import methods as case_methods
from gradleak.experiments.learned_inversion import LearnedInversionSettings
from gradleak.experiments.prior_shift import PriorShiftSettings, PriorSpec
from gradleak.learning import read_card

pytestmark = pytest.mark.slow

LEARNED = LearnedInversionSettings(
    n_images=6,
    held_out=100,
    batch_sizes=(1, 2),
    max_batch=3,
    train_steps=20,
    batch_train_steps=10,
    range_train_steps=10,
    hidden=32,
    batch_hidden=32,
    iterations=6,
    defense_images=1,
    drift_rounds=(1, 3),
    size_trials=2,
)


def learned_experiment():
    return dataclasses.replace(get_preset("learned-inversion"), settings=LEARNED)


@pytest.fixture(scope="module")
def learned_study(tmp_path_factory, shared_dir):
    out = tmp_path_factory.mktemp("learned")
    return out, run_experiment(learned_experiment(), out, RunOptions(threads=1))


def test_learned_study_records_every_part(learned_study):
    out, results = learned_study
    groups = results["summary"]["by_group"]
    for variant in ("learned", "ig", "learned+ig"):
        for b in LEARNED.batch_sizes:
            assert f"{variant}, B={b}" in groups
    for label in ("noise sigma=0.001", "noise sigma=0.01", "prune keep=0.3", "prune keep=0.1"):
        assert groups[f"learned, {label}"]["n_cases"] == 1
        assert groups[f"ig, {label}"]["psnr_median"] is not None
    drift = {c["rounds"]: c["weight_drift"] for c in results["cases"] if "rounds" in c}
    assert 0 < drift[1] < drift[3]
    sizes = [c for c in results["cases"] if c["variant"] in ("learned head", "analytic")]
    assert len(sizes) == 3 * LEARNED.size_trials * 2
    assert all(c["status"] == "done" and c["estimate"] >= 1 for c in sizes)
    accuracy = results["batch_size_accuracy"]
    assert set(accuracy) == {"B=1", "B=2", "B=3"}
    assert all(0 <= v <= 1 for by in accuracy.values() for v in by.values())
    assert set(results["speedup"]) == {"B=1", "B=2"}
    learned = [c for c in results["cases"] if c["variant"] == "learned"]
    assert all(c["iterations"] == 0 and c["psnr"] > 5 for c in learned)
    ig = next(c for c in results["cases"] if c["variant"] == "ig")
    assert ig["trajectory"][0][0] == 0 and ig["trajectory"][-1][0] == LEARNED.iterations - 1
    card = read_card(out / "artifacts" / "inverter-b1-3.safetensors")
    assert card["batch_sizes"] == [1, 3] and card["steps"] == LEARNED.range_train_steps
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["train_steps"] == 20 and "torch" in saved["versions"]
    assert (out / "table.md").exists() and (out / "results.csv").exists()


def test_learned_study_resumes_without_recomputing(learned_study, monkeypatch):
    out, results = learned_study

    def fail(*args, **kwargs):
        raise AssertionError("a finished case ran again")

    monkeypatch.setattr(case_methods, "run_case", fail)
    again = run_experiment(learned_experiment(), out, RunOptions(threads=1))
    assert [c["id"] for c in again["cases"]] == [c["id"] for c in results["cases"]]
    assert again["speedup"] == json.loads(json.dumps(results["speedup"]))


def test_prior_shift_study_trains_priors_without_the_private_images(tmp_path, shared_dir):
    settings = PriorShiftSettings(
        n_images=3,  # labels 8, 8, 0: a distinct batch of 2
        priors=(
            PriorSpec("in-distribution", "cifar10:aux", (0, 1, 8, 9)),
            PriorSpec("other dataset", "flowers17"),
        ),
        prior_steps=3,
        batch_sizes=(1, 2),
        iterations=4,
        ig_iterations=6,
    )
    experiment = dataclasses.replace(get_preset("prior-shift"), settings=settings)
    results = run_experiment(experiment, tmp_path, RunOptions(threads=1))
    groups = results["summary"]["by_group"]
    variants = ["ig", "ig (6 steps)", "dip"] + [
        f"{m} ({p})" for p in ("in-distribution", "other dataset") for m in ("gias", "gifd")
    ]
    for variant in variants:
        for b in (1, 2):
            assert groups[f"{variant}, B={b}"]["psnr_median"] is not None, variant
    card = read_card(tmp_path / "artifacts" / "prior-in-distribution.safetensors")
    assert card["classes"] == [0, 1, 8, 9] and card["steps"] == 3
    assert card["n_images"] == 4000 - 3  # the private vehicles' JPEG copies are dropped
    gias = next(c for c in results["cases"] if c["variant"] == "gias (in-distribution)")
    assert gias["files"]["progress"].endswith("progress.gif")
    assert (tmp_path / gias["files"]["progress"]).is_file()
    assert {c["settings"]["iterations"] for c in results["cases"] if c["variant"] == "ig"} == {4}
