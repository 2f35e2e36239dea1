"""Malicious servers: imprint and trap weights read real images back exactly, through secure
aggregation too; the client-side check flags every modification and no honest model."""

from __future__ import annotations

import json

import pytest
import torch

from gradleak.attacks import get_attack
from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.malicious import detect_modifications, modify_model, parse_server
from gradleak.metrics.matching import EXACT_DB, score_batch
from gradleak.models import build_model, list_models, save_weights
from gradleak.threat import load_observation, observe, save_observation
from tests.clitools import call_main
from tests.test_cli import one_error_line


@pytest.fixture(scope="module")
def batch(shared_dir):
    """32 CIFAR-10 test images drawn at random over the whole set (JPEG copies: the truth is
    whatever the client holds)."""
    images = load_images(shared_dir / "cifar10" / "test_jpeg_q75_100.npz", size=32)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))[:32]
    return images.images[pick], images.labels[pick]


def exact(reconstruction, images) -> float:
    return float((score_batch(reconstruction.images, images).psnr >= EXACT_DB).float().mean())


def test_imprint_reads_most_of_a_batch_exactly_and_peeling_beats_one_statistic(batch):
    images, labels = batch
    model = build_model("lenet")
    fractions = {}
    for statistics in (1, 3):
        sent = modify_model(model, f"imprint:bins=64,statistics={statistics}", private=images)
        reconstruction = get_attack("imprint")(observe(sent, images, labels, knows_labels=False))
        fractions[statistics] = exact(reconstruction, images)
    # Measured: 0.40 with one statistic (Fowl et al.), 0.96 with three and peeling.
    assert fractions[3] >= 0.8
    assert fractions[3] > fractions[1] + 0.2
    # Every image read is exact; labels of the images read come from the replay.
    assert reconstruction.notes["read"] >= 0.8 * len(images)


def test_imprint_and_trap_work_through_secure_aggregation(batch):
    images, labels = batch
    for spec, attack in (("imprint:bins=64", "imprint"), ("trap:neurons=300", "trap_weights")):
        sent = modify_model(build_model("lenet"), spec, seed=1)
        observation = observe(sent, images, labels, clients=4, knows_labels=False)
        reconstruction = get_attack(attack)(observation)
        assert exact(reconstruction, images) >= 0.8, spec
        assert score_batch(reconstruction.images, images, reconstruction.labels, labels)
        assert sorted(reconstruction.labels.tolist()) == sorted(labels.tolist())


def test_trap_weights_peeling_reads_more_than_one_reading_of_every_row(batch):
    images, labels = batch
    sent = modify_model(build_model("lenet"), "trap:neurons=300")
    observation = observe(sent, images, labels)
    peeled = exact(get_attack("trap_weights")(observation), images)
    once = exact(get_attack("trap_weights", peel=False)(observation), images)
    assert peeled >= 0.9 and peeled > once  # measured 1.0 vs 0.5


def test_train_mode_batchnorm_falls_back_to_readings_that_agree(batch):
    images, labels = batch[0][:16], batch[1][:16]
    sent = modify_model(build_model("resnet20", width=8), "imprint:bins=64")
    reconstruction = get_attack("imprint")(observe(sent, images, labels, bn_mode="train"))
    assert reconstruction.notes["single_image_test"] == "found in two statistics"
    assert exact(reconstruction, images) >= 0.3


def test_modified_models_round_trip_and_attacks_refuse_honest_ones(tmp_path, bundled):
    sent = modify_model(build_model("lenet"), "imprint:bins=16")
    path = save_observation(observe(sent, bundled.images, bundled.labels), tmp_path / "o")
    loaded = load_observation(path)
    assert loaded.model_config["server"]["name"] == "imprint"
    assert exact(get_attack("imprint")(loaded), bundled.images) > 0
    honest = observe(build_model("lenet"), bundled.images, bundled.labels)
    with pytest.raises(
        GradleakError, match="reads a model the malicious server 'imprint' modified"
    ):
        get_attack("imprint")(honest)
    with pytest.raises(GradleakError, match="already carries"):
        modify_model(sent, "trap")
    with pytest.raises(GradleakError, match="unknown server 'evil'"):
        parse_server("evil:x=1")
    with pytest.raises(GradleakError, match="has no parameter 'bins'"):
        parse_server("trap:bins=3")


MODIFICATIONS = [  # the weakest and strongest of each (benchmarks/malicious_servers.py: more)
    "imprint:bins=8,statistics=1,structure=cumulative",
    "imprint:bins=1024,statistics=4",
    "trap:scale=0.99",
    "trap:scale=0.5,neurons=100",
    "fishing:margin=1",
    "fishing:target=9,margin=10000",
]


def test_detection_flags_every_modification_by_name():
    model = build_model("resnet20", width=8)
    for spec in MODIFICATIONS:
        findings = detect_modifications(modify_model(model, spec))
        assert [f.name for f in findings] == [spec.split(":")[0]], spec
        assert findings[0].evidence


def test_detection_flags_no_registry_model(shared_dir):
    for name in list_models():
        for seed in (0, 1):
            assert detect_modifications(build_model(name, seed=seed)) == [], name
    for name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        assert detect_modifications(build_model(name, weights="pretrained")) == [], name


def test_cli_observe_server_and_analyze(tmp_path, monkeypatch, capsys):
    out = tmp_path / "obs.safetensors"
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "lenet", "--images", "bundled", "--out", out,
        "--server", "trap:neurons=300", "--hide-labels",
    )  # fmt: skip
    assert code == 0, err
    code, _, err = call_main(monkeypatch, capsys, "analyze", out, "--json", tmp_path / "a.json")
    assert code == 0, err
    report = json.loads((tmp_path / "a.json").read_text())
    assert [f["name"] for f in report["server_modifications"]] == ["trap"]
    weights = save_weights(build_model("lenet"), tmp_path / "received.safetensors")
    code, out_text, _ = call_main(monkeypatch, capsys, "analyze", weights)
    assert code == 0 and "no malicious modification found" in out_text
    code, _, err = call_main(
        monkeypatch, capsys, "observe", "--model", "lenet", "--images", "bundled", "--out", out,
        "--server", "imprint:bogus=1",
    )  # fmt: skip
    assert code == 2
    assert "has no parameter 'bogus'" in one_error_line(err)


def test_gradleak_list_names_every_server_and_its_attack():
    from gradleak import catalog
    from gradleak.attacks import ATTACKS
    from gradleak.malicious import SERVERS

    assert catalog.servers() == {
        name: f"{server.usage()} (attack: {server.attack})" for name, server in SERVERS.items()
    }
    assert all(server.attack in ATTACKS for server in SERVERS.values())
