"""`gradleak analyze`: batch size, labels, per-layer rank and applicable attacks."""

from __future__ import annotations

import json

import pytest

from gradleak.analysis.report import analyze
from gradleak.cli import main
from gradleak.models import build_model
from gradleak.threat import observe, save_observation


@pytest.fixture(scope="module")
def hidden_batch(cifar10):
    """mlp4 on 4 real CIFAR-10 images (labels 3, 8, 8, 0: one repeated), labels and size hidden."""
    model = build_model("mlp4", seed=0)
    return observe(
        model, cifar10.images[:4], cifar10.labels[:4], knows_labels=False, knows_batch_size=False
    )


def test_analyze_recovers_batch_size_and_labels(hidden_batch):
    report = analyze(hidden_batch)
    assert report["batch_size_known"] is None
    assert report["batch_size_estimate"] == 4
    assert sorted(report["labels"]) == sorted(hidden_batch.truth.labels.tolist())
    assert report["label_counts"]["8"] == 2
    assert [row["name"] for row in report["layers"]] == ["fc1", "fc2", "fc3", "fc4"]
    for row in report["layers"]:
        assert {"name", "unknowns", "equations", "rank"} <= set(row)
        assert 0 < row["rank"] <= row["unknowns"]
    assert report["attacks"]["bias"]["applies"]
    assert "mixture" in report["attacks"]["bias"]["expect"]
    assert report["attacks"]["fc_unmix"]["applies"]
    assert not report["attacks"]["rgap"]["applies"]  # batch size 4
    assert report["truth_check"] == {
        "batch_size": 4,
        "batch_size_correct": True,
        "label_accuracy": 1.0,
    }


def test_analyze_ignores_the_truth(hidden_batch):
    without = analyze(hidden_batch.attacker_view())
    with_truth = analyze(hidden_batch)
    with_truth.pop("truth_check")
    assert json.dumps(without, sort_keys=True) == json.dumps(with_truth, sort_keys=True)


def test_analyze_cli_writes_json(tmp_path, hidden_batch, monkeypatch, capsys):
    path = save_observation(hidden_batch, tmp_path / "obs.safetensors")
    monkeypatch.setattr(
        "sys.argv", ["gradleak", "analyze", str(path), "--json", str(tmp_path / "a.json")]
    )
    main()
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["batch_size_estimate"] == 4
    assert len(report["labels"]) == 4
    assert "per-layer information discard" in capsys.readouterr().out


def test_analyze_cli_rejects_a_corrupt_file(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    monkeypatch.setattr("sys.argv", ["gradleak", "analyze", str(bad)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "not a valid safetensors file" in capsys.readouterr().err
