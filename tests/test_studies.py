"""The studies that train the attacker's networks first: learned-inversion and prior-shift.

Tiny budgets: these check that every part of a study runs, is recorded and resumes; the measured
quality lives in benchmarks/learned_inversion.py and benchmarks/prior_shift.py.
"""

from __future__ import annotations

import json
import time

import pytest

from gradleak.experiments.learned_inversion import LearnedInversionSettings, run_learned_inversion
from gradleak.experiments.prior_shift import PriorShiftSettings, PriorSpec, run_prior_shift
from gradleak.learning import read_card


@pytest.fixture(scope="module")
def learned_study(tmp_path_factory, shared_dir):
    settings = LearnedInversionSettings(
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
    out = tmp_path_factory.mktemp("learned")
    return out, settings, run_learned_inversion(out, settings=settings)


def test_learned_study_records_every_part(learned_study):
    out, settings, results = learned_study
    groups = results["summary"]["by_group"]
    for variant in ("learned", "ig", "learned+ig"):
        for b in settings.batch_sizes:
            assert f"{variant}, B={b}" in groups
    for label in ("noise 0.001", "noise 0.01", "prune 0.3", "prune 0.1"):
        assert groups[f"learned, {label}"]["n_cases"] == 1
        assert groups[f"ig, {label}"]["psnr_median"] is not None
    drift = {c["rounds"]: c["weight_drift"] for c in results["cases"] if "rounds" in c}
    assert 0 < drift[1] < drift[3]
    sizes = [c for c in results["cases"] if c["variant"] == "batch-size prediction"]
    assert [c["batch_size"] for c in sizes] == [1, 2, 3]
    assert all(0 <= c["accuracy"] <= 1 and 0 <= c["analytic_accuracy"] <= 1 for c in sizes)
    assert set(results["speedup"]) == {"B=1", "B=2"}
    learned = [c for c in results["cases"] if c["variant"] == "learned"]
    assert all(c["iterations"] == 0 and c["psnr"] > 5 for c in learned)
    ig = next(c for c in results["cases"] if c["variant"] == "ig")
    assert ig["trajectory"][0][0] == 0 and ig["trajectory"][-1][0] == settings.iterations - 1
    card = read_card(out / "artifacts" / "inverter-b1-3.safetensors")
    assert card["batch_sizes"] == [1, 3] and card["steps"] == settings.range_train_steps
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["train_steps"] == 20 and "torch" in saved["versions"]
    assert (out / "table.md").exists()


def test_learned_study_resumes_without_recomputing(learned_study):
    out, settings, results = learned_study
    start = time.perf_counter()
    again = run_learned_inversion(out, settings=settings)
    assert time.perf_counter() - start < 10
    assert [c["id"] for c in again["cases"]] == [c["id"] for c in results["cases"]]


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
    results = run_prior_shift(tmp_path, settings=settings)
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
    gif = next(c for c in results["cases"] if c["variant"] == "gias (in-distribution)")
    assert gif["files"]["gif"].endswith("progress.gif")
