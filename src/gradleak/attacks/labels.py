"""Label strategies of the optimization engine: where the candidate batch's labels come from.

- ``known``: the server knows the labels (the observation says so);
- ``analytic``: read off the output layer's gradient (iDLG at batch size 1, the count-aware
  recovery of :func:`gradleak.gradient.recover_labels` for larger batches);
- ``joint``: DLG (Zhu et al. 2019): label logits are optimized together with the images;
- ``auto``: known if the threat model allows, else analytic; joint for a FedAvg update of
  several local steps (its output layer sums steps at moving weights, which the analytic
  counts misread: on LeNet, 8 images in 4 steps, Inverting Gradients reached 8.9 dB with
  analytic labels and 11.2 dB with joint ones).

Labels optimized jointly are refined at the end by :func:`refine_labels`: coordinate descent
over every image's class on the replayed gradient distance of the reconstructed images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradleak.errors import GradleakError
from gradleak.gradient.labels import idlg_label, recover_labels
from gradleak.gradient.structure import output_layer
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

STRATEGIES = ("auto", "known", "analytic", "joint")


def resolve_strategy(strategy: str, observation: Observation) -> str:
    """Turn ``auto`` into a concrete strategy: known if the threat model allows, else analytic."""
    if strategy not in STRATEGIES:
        raise GradleakError(f"unknown label strategy {strategy!r}; choose one of {STRATEGIES}")
    if strategy == "auto":
        if observation.labels is not None:
            return "known"
        several_steps = observation.kind == "update" and not observation.single_step()
        return "joint" if several_steps else "analytic"
    if strategy == "known" and observation.labels is None:
        raise GradleakError(
            "label strategy 'known' but the threat model hides the labels from the attacker"
        )
    return strategy


def strategy_problems(strategy: str, observation: Observation, model: ImageClassifier) -> list[str]:
    """Why ``strategy`` cannot give labels for ``observation`` (empty when it can)."""
    try:
        concrete = resolve_strategy(strategy, observation)
        if concrete == "analytic":
            output_layer(model)
    except GradleakError as err:
        return [str(err)]
    return []


def fixed_labels(
    strategy: str, observation: Observation, model: ImageClassifier, batch_size: int
) -> torch.Tensor:
    """Labels (B,) for the ``known`` and ``analytic`` strategies."""
    if strategy == "known":
        return observation.labels.clone()
    if batch_size == 1:
        return idlg_label(observation, model, batch_size)
    return recover_labels(observation, model, batch_size=batch_size).labels


def batch_labels(observation: Observation, model: ImageClassifier, batch_size: int) -> torch.Tensor:
    """Labels (B,) for attacks without a label strategy of their own: known if the threat model
    allows, else recovered analytically (iDLG at B = 1, count-aware recovery otherwise)."""
    return fixed_labels(resolve_strategy("auto", observation), observation, model, batch_size)


def refine_labels(
    distance_of: Callable[[torch.Tensor], float],
    labels: torch.Tensor,
    num_classes: int,
    sweeps: int = 3,
) -> torch.Tensor:
    """Coordinate descent on the labels (B,): change one image's class at a time to the one
    that lowers ``distance_of(labels)`` most, until a sweep over the batch changes nothing (at
    most ``sweeps`` sweeps of ``B x num_classes`` evaluations)."""
    labels = labels.clone()
    best = distance_of(labels)
    for _ in range(sweeps):
        changed = False
        for i in range(len(labels)):
            for c in range(num_classes):
                if c == labels[i]:
                    continue
                candidate = labels.clone()
                candidate[i] = c
                value = distance_of(candidate)
                if value < best - 1e-12:
                    best, labels, changed = value, candidate, True
        if not changed:
            break
    return labels
