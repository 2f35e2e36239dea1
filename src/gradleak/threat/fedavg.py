"""FedAvg rounds (McMahan et al., AISTATS 2017, Algorithm 1): move a model as FL training does.

Attacks that learn something about one model state (a learned inverter, a generator tuned to it)
must know how fast that knowledge goes stale: :func:`fedavg_rounds` trains a copy of the model for
``rounds`` rounds, each of ``clients`` clients running ``local_steps`` SGD steps from the global
weights on its own shard of the data, the server averaging their weights (and BatchNorm buffers).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier


def fedavg_rounds(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    rounds: int,
    clients: int = 4,
    local_steps: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
) -> Iterator[tuple[int, ImageClassifier]]:
    """Yield ``(round, model after that round)`` for rounds 1..``rounds`` (copies; input untouched).

    The data is split into ``clients`` equal shards (seeded shuffle); each local step draws a
    seeded mini-batch of ``batch_size`` from the client's shard.
    """
    if rounds < 0 or clients < 1 or local_steps < 1 or batch_size < 1:
        raise GradleakError("fedavg_rounds needs rounds >= 0 and clients, steps, batch size >= 1")
    if len(images) < clients:
        raise GradleakError(f"{len(images)} images cannot be split over {clients} clients")
    generator = torch.Generator().manual_seed(seed)
    shards = torch.randperm(len(images), generator=generator).chunk(clients)
    server = copy.deepcopy(model)
    for round_index in range(1, rounds + 1):
        states = []
        for shard in shards:
            client = copy.deepcopy(server)
            client.train()
            optimizer = torch.optim.SGD(client.net.parameters(), lr=lr)
            for _ in range(local_steps):
                pick = shard[torch.randint(len(shard), (batch_size,), generator=generator)]
                loss = nn.functional.cross_entropy(client(images[pick]), labels[pick])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            states.append(client.net.state_dict())
        averaged = {
            key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            for key, value in states[0].items()
        }
        server.net.load_state_dict(averaged)
        yield round_index, copy.deepcopy(server)
