"""gradleak.flower: a Flower strategy that captures every client's update as an observation, the
attacks on the captures, and the example Flower app run end to end in Flower's simulation engine."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from browser import check_renders, needs_chromium
from torch import nn

from gradleak.errors import GradleakError
from gradleak.flower.capture import update_observation
from gradleak.metrics import psnr
from gradleak.models import build_model
from gradleak.threat import LocalTraining, observe

flwr = pytest.importorskip("flwr", reason="gradleak[flower] is not installed")


def _client_training(model, images, labels, lr: float, batch_size: int) -> dict:
    """What a Flower client does: plain SGD on its images in order; its new state dict."""
    client = copy.deepcopy(model)
    client.train()
    optimizer = torch.optim.SGD(client.net.parameters(), lr=lr)
    for start in range(0, len(images), batch_size):
        optimizer.zero_grad()
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        nn.functional.cross_entropy(client(x), y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in client.net.state_dict().items()}


def test_a_captured_update_is_the_update_gradleak_simulates(bundled):
    model = build_model("lenet", seed=1)
    images, labels = bundled.images[:4], bundled.labels[:4]
    local = LocalTraining(lr=0.05, batch_size=2, steps=2)
    sent = {k: v.clone() for k, v in model.net.state_dict().items()}
    returned = _client_training(model, images, labels, lr=0.05, batch_size=2)
    captured = update_observation(
        model, sent, returned, images=4, local=local, hidden=("lr",), metadata={"round": 3}
    )
    simulated = observe(model, images, labels, local=local)
    for name, value in simulated.gradients.items():
        torch.testing.assert_close(captured.gradients[name], value, rtol=1e-5, atol=1e-8)
    assert captured.kind == "update" and captured.local["order"] == [[0, 1], [2, 3]]
    assert captured.labels is None and not captured.knows_labels  # a server never sees labels
    assert captured.knows_local["lr"] is False and captured.knows_local["steps"] is True
    assert captured.attacker_view().local["lr"] is None
    assert captured.metadata == {"round": 3}


def test_arrays_are_matched_by_name_or_order_and_mismatches_are_named(bundled):
    model = build_model("lenet", seed=1)
    sent = model.net.state_dict()
    returned = _client_training(model, bundled.images[:1], bundled.labels[:1], 0.1, 1)
    local = LocalTraining(lr=0.1, batch_size=1, steps=1)
    # Flower's legacy NumPyClient sends a list: an ArrayRecord keys it "0", "1", ...
    by_order = {str(i): v for i, v in enumerate(returned.values())}
    sent_by_order = {str(i): v for i, v in enumerate(sent.values())}
    observation = update_observation(model, sent_by_order, by_order, images=1, local=local)
    assert set(observation.gradients) == {n for n, _ in model.net.named_parameters()}
    missing = dict(list(returned.items())[1:])
    with pytest.raises(GradleakError, match="do not fit model 'lenet'"):
        update_observation(model, sent, missing, images=1, local=local)
    wrong = {**returned, "fc.bias": torch.zeros(3)}
    with pytest.raises(GradleakError, match="'fc.bias' has shape \\[3\\]"):
        update_observation(model, sent, wrong, images=1, local=local)
    with pytest.raises(GradleakError, match="did not train"):
        update_observation(model, sent, sent, images=1, local=local)
    broken = {**returned, "fc.bias": torch.full_like(returned["fc.bias"], float("nan"))}
    with pytest.raises(GradleakError, match="NaN"):
        update_observation(model, sent, broken, images=1, local=local)
    with pytest.raises(GradleakError, match="training images"):
        update_observation(model, sent, returned, images=0, local=local)
    with pytest.raises(GradleakError, match="unknown local-training facts"):
        update_observation(model, sent, returned, images=1, local=local, hidden=("secret",))


class _Grid:
    """The part of Flower's Grid a strategy's configure_train uses: the connected nodes."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


@pytest.fixture()
def flower_messages(monkeypatch):
    """Flower messages outside its runtime need a task identity (run_simulation sets one)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def test_the_strategy_records_every_reply_and_never_breaks_the_round(
    bundled, tmp_path, flower_messages
):
    from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
    from flwr.serverapp.strategy import FedAvg

    from gradleak.attacks import load_reconstruction
    from gradleak.flower import AuditStrategy

    model = build_model("lenet", seed=2)
    strategy = AuditStrategy(
        FedAvg(min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0),
        model=model,
        out=tmp_path / "audit",
        local={"lr": 0.01, "batch_size": 1, "steps": 1},
        attacks=("idlg",),
        attack_settings={"idlg": {"iterations": 60}},
    )
    assert strategy.fraction_train == 1.0  # the wrapped strategy's settings show through
    sent = ArrayRecord(model.net.state_dict())
    messages = list(strategy.configure_train(1, sent, ConfigRecord({"lr": 0.01}), _Grid([5, 6, 7])))
    assert sorted(m.metadata.dst_node_id for m in messages) == [5, 6, 7]
    by_node = {m.metadata.dst_node_id: m for m in messages}
    image, label = bundled.images[2:3], bundled.labels[2:3]
    trained = _client_training(model, image, label, lr=0.01, batch_size=1)

    def reply(node, state):
        content = {"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": 1})}
        return Message(RecordDict(content), reply_to=by_node[node])

    replies = [
        reply(5, trained),
        Message(Error(code=0, reason="out of memory"), reply_to=by_node[6]),
        reply(7, model.net.state_dict()),  # a client that did not train
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None  # FedAvg aggregated as without the audit
    strategy.close()  # waits for the out-of-band attack
    manifest = json.loads((tmp_path / "audit" / "captures.json").read_text())
    entries = {e["node"]: e for e in manifest["captures"]}
    assert entries[5]["status"] == "captured" and entries[5]["images"] == 1
    assert entries[6]["status"] == "not captured" and "out of memory" in entries[6]["reason"]
    assert entries[7]["status"] == "not captured" and "did not train" in entries[7]["reason"]
    assert manifest["versions"]["flwr"] == flwr.__version__
    attack = entries[5]["attacks"]["idlg"]
    assert attack["status"] == "done", attack
    reconstruction = load_reconstruction(tmp_path / "audit" / attack["file"])
    # iDLG on one image, out of band, 60 steps (the end-to-end test below runs the full budget).
    assert float(psnr(reconstruction.images, image)) > 20
    assert reconstruction.labels.tolist() == label.tolist()

    # A failing attack is logged and recorded, never raised into Flower.
    again = AuditStrategy(
        FedAvg(min_train_nodes=1, min_available_nodes=1, fraction_evaluate=0.0),
        model=model, out=tmp_path / "second", local={"lr": 0.01, "batch_size": 1, "steps": 1},
        attacks=("idlg",), attack_settings={"idlg": {"distance": "no-such-distance"}},
    )  # fmt: skip
    (message,) = again.configure_train(1, sent, ConfigRecord(), _Grid([5]))
    by_node = {5: message}
    assert again.aggregate_train(1, [reply(5, trained)])[0] is not None
    again.close()
    manifest = json.loads((tmp_path / "second" / "captures.json").read_text())
    (entry,) = manifest["captures"]
    assert entry["attacks"]["idlg"]["status"] == "failed"
    assert "unknown gradient distance 'no-such-distance'" in entry["attacks"]["idlg"]["error"]


def test_the_strategy_refuses_what_would_go_wrong_before_the_first_round(tmp_path):
    from flwr.serverapp.strategy import FedAvg

    from gradleak.flower import AuditStrategy

    folder = tmp_path / "audit"
    local = {"lr": 0.01, "batch_size": 1, "steps": 1}
    with pytest.raises(GradleakError, match="unknown local-training fields \\['learning_rate'\\]"):
        AuditStrategy(FedAvg(), model="lenet", out=folder, local={"learning_rate": 0.1})
    with pytest.raises(GradleakError, match="unknown hidden facts"):
        AuditStrategy(FedAvg(), model="lenet", out=folder, local=local, hidden=("seed",))
    with pytest.raises(GradleakError, match="unknown attack method 'dgl'"):
        AuditStrategy(FedAvg(), model="lenet", out=folder, local=local, attacks=("dgl",))
    with pytest.raises(GradleakError, match="setting iterations must be positive, got 0"):
        AuditStrategy(
            FedAvg(),
            model="lenet",
            out=folder,
            local=local,
            attack_settings={"idlg": {"iterations": 0}},
        )
    with pytest.raises(GradleakError, match="Message-API strategy"):
        AuditStrategy(object(), model="lenet", out=folder, local=local)
    folder.mkdir()
    (folder / "captures.json").write_text(json.dumps({"captures": [{"round": 1}]}))
    with pytest.raises(GradleakError, match="already holds the captures"):
        AuditStrategy(FedAvg(), model="lenet", out=folder, local=local)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, shared_dir):
    """The example Flower app, 2 clients x 2 rounds of one SGD step on one CIFAR-10 image, client
    1 behind Flower's LocalDpMod, run in Flower's simulation engine and attacked (iDLG, at most
    50 steps: 34-40 dB on the clear client here)."""
    pytest.importorskip("ray", reason="Flower's simulation engine needs ray")
    from gradleak.flower.demo import FlowerDemo, run_demo

    demo = FlowerDemo(
        images="cifar10", clients=2, rounds=2, dp_clients=(1,), dp_epsilon=100.0, iterations=50
    )
    out = tmp_path_factory.mktemp("flower") / "demo"
    results = run_demo(demo, out, note=lambda text: None)
    return demo, out, results


@pytest.mark.slow
def test_a_real_flower_federation_leaks_and_its_dp_client_is_reported_as_stopped(federation):
    demo, out, results = federation
    partition = {}
    for file in (out / "client-records").glob("*.json"):
        record = json.loads(file.read_text())
        partition[record["node"]] = record["partition"]
    cases = results["cases"]
    assert len(cases) == 4 and {(c["round"], partition[c["node"]]) for c in cases} == {
        (1, 0), (1, 1), (2, 0), (2, 1)
    }  # fmt: skip
    assert all(c["status"] == "done" for c in cases)  # the DP client is attacked, not a crash
    clear = [c for c in cases if partition[c["node"]] == 0]
    private = [c for c in cases if partition[c["node"]] == 1]
    assert min(c["psnr"] for c in clear) >= 25, [c["psnr"] for c in clear]
    assert all(c["label_accuracy"] == 1.0 for c in clear)
    assert max(c["psnr"] for c in private) < 15, [c["psnr"] for c in private]
    report = (out / "report.html").read_text()
    assert report.count("<span class=leaks>leaks</span>") == 2
    assert report.count("<span class=stopped>stopped</span>") == 2
    assert "local-dp-noise-std 0.04845" in report


@pytest.mark.slow
@needs_chromium
def test_the_federation_report_renders_in_headless_chromium(federation, tmp_path):
    _, out, _ = federation
    check_renders(out / "report.html", tmp_path, min_images=5)  # 4 grids and a GIF


@pytest.mark.slow
def test_the_demo_resumes_from_its_captures_and_refuses_other_settings(federation, monkeypatch):
    import dataclasses

    from gradleak.flower import demo as flower_demo

    demo, out, results = federation

    def no_federation(*args, **kwargs):
        raise AssertionError("the federation ran again")

    monkeypatch.setattr(flower_demo, "run_federation", no_federation)
    again = flower_demo.run_demo(demo, out, note=lambda text: None)
    assert [c["psnr"] for c in again["cases"]] == [c["psnr"] for c in results["cases"]]
    with pytest.raises(GradleakError, match="other settings"):
        flower_demo.run_demo(dataclasses.replace(demo, rounds=3), out, note=lambda text: None)
