"""`gradleak audit`: a setup's attacks against each defense, each defense's accuracy cost, and
a self-contained report.html checked in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re

import pytest
from browser import check_renders, needs_chromium
from clitools import call_main

from gradleak.errors import GradleakError
from gradleak.experiments.audit import load_audit, run_audit
from gradleak.threat import load_observation

AUDIT = """
[sweep]
images = "cifar10"
n_images = 2
seeds = [0]

[grid]
model = ["lenet"]
batch_size = [1]
attack = ["idlg", "mean_image"]
defense = ["none", "prune:keep=0.01"]

[attacks.idlg]
iterations = 25

[utility]
n_train = 400
held_out = 200
steps = 40
batch_size = 16
lr = 0.01

[audit]
title = "test audit"
margin_db = 3
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory, shared_dir):
    folder = tmp_path_factory.mktemp("audit")
    path = folder / "audit.toml"
    path.write_text(AUDIT)
    report = run_audit(load_audit(path), folder / "out")
    return load_audit(path), report


def test_audit_report_states_a_verdict_and_the_cost_per_defense(audited):
    audit, report = audited
    out = report.parent
    text = report.read_text()
    results = json.loads((out / "results.json").read_text())
    utility = json.loads((out / "utility.json").read_text())["records"]
    assert len(utility) == 2  # none and prune: one trained model each
    accuracies = sorted(r["accuracy"] for r in utility.values())
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    # Every finished attack case is reported; nothing refers to files outside the page.
    attacked = [r for r in results["cases"] if r.get("attack") == "idlg"]
    assert attacked and all(r["status"] == "done" for r in attacked)
    assert "src='data:image/png;base64," in text and "data:image/gif;base64," in text
    assert not re.search(r"""(src|href)=['"](?!data:)""", text)
    for label in ("none", "prune keep=0.01"):
        assert f"<td>{label}</td>" in text
    # No defense: iDLG on LeNet, one image, clearly beats the mean image.
    clean = [r for r in attacked if r["defense"] == "none"]
    baseline = [r for r in results["cases"] if r.get("attack") == "mean_image"]
    assert min(r["psnr"] for r in clean) > max(r["psnr"] for r in baseline) + 3
    assert "<span class=leaks>leaks</span>" in text
    assert audit.source in text.replace("&quot;", '"')


def test_an_audit_resumes_without_training_or_attacking_again(audited, monkeypatch):
    audit, report = audited
    from gradleak.experiments import utility

    def no_training(*args, **kwargs):
        raise AssertionError("a finished setting was trained again")

    monkeypatch.setattr(utility, "defense_accuracy", no_training)
    from gradleak.experiments import methods
    from gradleak.experiments.spec import AttackSpec

    monkeypatch.setitem(methods.RUNNERS, AttackSpec, no_training)
    again = run_audit(audit, report.parent)
    assert again == report and "leaks" in again.read_text()


@needs_chromium
def test_the_report_renders_in_headless_chromium(audited, tmp_path):
    _, report = audited
    check_renders(report, tmp_path, min_images=5)  # grids, GIFs, plot


def test_audit_files_with_mistakes_are_refused_naming_them(tmp_path):
    for text, message in (
        (AUDIT.replace("steps = 40", "stepz = 40"), r"\[utility\]: unknown key 'stepz'"),
        (AUDIT.replace("margin_db = 3", "margin_db = 'x'"), r"\[audit\] margin_db must be"),
        (AUDIT.replace('"prune:keep=0.01"', '"blur"'), "unknown defense 'blur'"),
        (AUDIT.replace("lr = 0.01", "lr = -1.0"), "learning rate must be > 0"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        with pytest.raises(GradleakError, match=message):
            load_audit(path)
    with pytest.raises(GradleakError, match="no such audit file"):
        load_audit(tmp_path / "missing.toml")


def test_observe_applies_defenses_named_on_the_command_line(monkeypatch, capsys, tmp_path):
    out = tmp_path / "obs.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "lenet", "--images", "bundled",
        "--n-images", "1", "--defense", "prune:keep=0.1", "--defense", "noise:sigma=0.001",
        "--out", out,
    )  # fmt: skip
    assert code == 0, err
    applied = load_observation(out).defense["applied"]
    assert [(d["name"], d.get("keep"), d.get("sigma")) for d in applied] == [
        ("prune", 0.1, None),
        ("noise", None, 0.001),
    ]
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "lenet", "--images", "bundled",
        "--defense", "prune:kept=0.1", "--out", tmp_path / "bad.safetensors",
    )  # fmt: skip
    assert code == 2 and "defense 'prune' has no parameter 'kept'" in err
    assert not (tmp_path / "bad.safetensors").exists()
