"""Label strategies of the optimization engine: where the candidate batch's labels come from.

- ``known``: the server knows the labels (the observation says so);
- ``analytic``: read off the output layer's gradient (iDLG at batch size 1, the count-aware
  recovery of :func:`gradleak.gradient.recover_labels` for larger batches);
- ``joint``: DLG (Zhu et al. 2019): label logits are optimized together with the images;
- ``auto``: known if the threat model allows, else analytic.
"""

from __future__ import annotations

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
        return "known" if observation.labels is not None else "analytic"
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
