"""The app's model, data and local training: plain PyTorch, as in Flower's PyTorch quickstart.

Each client (a SuperNode) holds a shard of the images (every ``num-partitions``-th image from its
``partition-id`` on) and, in round r, trains on the next ``local-steps x batch-size`` images of
its shard, in order. Images are read offline from an ``images`` spec of gradleak's loaders
(``"bundled"``: the photos shipped with scikit-image; no dataset download).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from gradleak.data import load_images
from gradleak.models import ImageClassifier, build_model

#: The run config's defaults (``[tool.flwr.app.config]`` in pyproject.toml holds the same).
DEFAULTS = {
    "num-server-rounds": 2,
    "model": "lenet",
    "images": "bundled",
    "n-images": 0,  # 0: every image the spec holds
    "image-size": 32,
    "num-classes": 10,
    "seed": 0,
    "lr": 0.01,
    "local-steps": 1,
    "batch-size": 1,
    "dp-clients": "",  # partition ids (comma-separated) whose updates go through LocalDpMod
    "dp-clipping-norm": 1.0,
    "dp-sensitivity": 1.0,
    "dp-epsilon": 1.0,
    "dp-delta": 1e-5,
    "audit-dir": "flower-audit",
    "audit-attacks": "",  # gradleak attacks run on each update as it arrives (comma-separated)
    "truth-dir": "",  # evaluation only: where clients note which of their images they used
}


def app_config(run_config, overrides: dict | None = None) -> dict:
    """The defaults, updated by the run config (``flwr run --run-config``), then ``overrides``."""
    return {**DEFAULTS, **dict(run_config or {}), **dict(overrides or {})}


def load_model(config: dict) -> ImageClassifier:
    """The model every node builds; it normalizes its [0, 1] inputs itself."""
    return build_model(
        config["model"],
        num_classes=int(config["num-classes"]),
        image_size=int(config["image-size"]),
        seed=int(config["seed"]),
    )


@lru_cache(maxsize=4)
def _images(spec: str, size: int, n: int):
    data = load_images(spec, size=size, n=n or None)
    return data.images, data.labels


def client_batch(config: dict, partition: int, partitions: int, server_round: int):
    """The indices, images and labels client ``partition`` trains on in ``server_round``."""
    spec, size, first = str(config["images"]), int(config["image-size"]), int(config["n-images"])
    images, labels = _images(spec, size, first)
    shard = list(range(partition, len(images), partitions))
    per_round = int(config["local-steps"]) * int(config["batch-size"])
    if per_round > len(shard):
        raise ValueError(
            f"client {partition} holds {len(shard)} images; a round needs {per_round} "
            "(local-steps x batch-size): give more images or fewer steps"
        )
    start = (server_round - 1) * per_round
    indices = [shard[(start + j) % len(shard)] for j in range(per_round)]
    return indices, images[indices], labels[indices]


def train(model: ImageClassifier, images, labels, lr: float, batch_size: int) -> float:
    """Plain SGD over ``images`` in order, ``batch_size`` at a time; the mean loss."""
    model.train()
    optimizer = torch.optim.SGD(model.net.parameters(), lr=lr)
    losses = []
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate(model: ImageClassifier, images, labels) -> tuple[float, float]:
    """Loss and accuracy of ``model`` on ``images``."""
    model.eval()
    logits = model(images)
    loss = float(nn.functional.cross_entropy(logits, labels))
    return loss, float((logits.argmax(1) == labels).float().mean())


def note_batch(config: dict, node: int, partition: int, server_round: int, indices) -> None:
    """Evaluation only: write which images this client used (never sent to the server)."""
    folder = str(config["truth-dir"])
    if not folder:
        return
    path = Path(folder) / f"node-{node}-round-{server_round}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"node": node, "partition": partition, "round": server_round, "indices": indices}
    path.write_text(json.dumps(record))
