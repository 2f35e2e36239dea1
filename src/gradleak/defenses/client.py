"""A client's step with its defenses: data defenses, then the step, then update defenses.

:func:`defended_step` is the one place where defenses meet the client's computation; both
:func:`gradleak.threat.observe` (what the server sees) and :mod:`gradleak.experiments.utility`
(what the defense costs in accuracy) call it, so that the leak and the cost are measured on the
same client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gradleak.defenses.registry import get_defense

Gradients = dict[str, torch.Tensor]


@dataclass
class ClientBatch:
    """What a defense may use: the client's model (the server's weights, in the client's
    BatchNorm mode), the images and targets it trains on ((B,) labels, or (B, C) class
    probabilities once a data defense mixed them), its local training (None: one gradient step)
    with the order of its steps, images of the client's own data set beyond this batch
    (``partners``, for MixUp and InstaHide) with their (P,) labels (``partner_labels``) and a
    seeded generator."""

    model: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    bn_mode: str = "train"
    local: object | None = None  # gradleak.threat.LocalTraining
    order: list[list[int]] | None = None
    partners: torch.Tensor | None = None
    partner_labels: torch.Tensor | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)

    @property
    def num_classes(self) -> int:
        return int(self.model.config["num_classes"])

    def soft_targets(self) -> torch.Tensor:
        """The targets as (B, C) class probabilities."""
        if self.targets.ndim == 2:
            return self.targets
        return nn.functional.one_hot(self.targets, self.num_classes).to(self.images.dtype)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The client's mean cross-entropy (soft targets where the data were mixed)."""
        targets = self.targets if targets is None else targets
        return nn.functional.cross_entropy(logits, targets)


@dataclass
class DefendedStep:
    """The client's answer: what it sends (``gradients``), its loss, one record per defense
    (name, parameters, facts) and the images and targets it trained on."""

    gradients: Gradients
    loss: float
    records: list[dict]
    images: torch.Tensor
    targets: torch.Tensor


Compute = Callable[[ClientBatch], tuple[Gradients, float]]


def defended_step(
    client: ClientBatch, defenses: Sequence[tuple[str, dict]], compute: Compute, *, seed: int = 0
) -> DefendedStep:
    """Run the client's step ``compute(client) -> (gradients, loss)`` with ``defenses`` (each
    ``(name, params)``, in order within their stage: data defenses first, then at most one step
    defense replacing ``compute``, then update defenses on what it sends). Each defense draws
    from its own generator, seeded by ``seed`` and its position."""
    chosen = [(get_defense(name), dict(params)) for name, params in defenses]
    for defense, params in chosen:
        defense.check(params)  # unknown or missing parameters, named
    steps = [d.name for d, _ in chosen if d.stage == "step"]
    if len(steps) > 1:
        from gradleak.errors import GradleakError

        raise GradleakError(f"at most one defense may replace the client's step, got {steps}")
    records: list[dict] = [{} for _ in chosen]

    def generator(position: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed * 1_000_003 + 7919 * position + 1)

    for position, (defense, params) in enumerate(chosen):
        if defense.stage == "data":
            client.generator = generator(position)
            images, targets, facts = defense.function(
                client.images, client.soft_targets(), client, **params
            )
            client = dataclasses.replace(client, images=images, targets=targets)
            records[position] = {"name": defense.name, **params, **facts}
    step = next(((p, d, a) for p, (d, a) in enumerate(chosen) if d.stage == "step"), None)
    if step is None:
        gradients, loss = compute(client)
    else:
        position, defense, params = step
        client.generator = generator(position)
        gradients, loss, facts = defense.function(client, **params)
        records[position] = {"name": defense.name, **params, **facts}
    for position, (defense, params) in enumerate(chosen):
        if defense.stage == "update":
            client.generator = generator(position)
            gradients, facts = defense.function(gradients, client, **params)
            records[position] = {"name": defense.name, **params, **facts}
    return DefendedStep(gradients, loss, records, client.images, client.targets)
