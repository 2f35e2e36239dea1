"""Label strategies: where the labels of the candidate batch come from.

- ``known``: the server knows the labels (the observation says so);
- ``analytic``: iDLG (Zhao et al. 2020) at batch size 1: with cross-entropy, the gradient of the
  output layer's bias is softmax(z) - onehot(y), negative only at the true class; without a bias,
  the weight gradient's row (p_c - y_c) * a is negative only at the true class for
  non-negative features a (sigmoid/ReLU), so the row with the smallest sum is the label. For
  larger batches, the count-aware recovery of :func:`gradleak.analysis.labels.recover_labels`;
- ``joint``: DLG (Zhu et al. 2019): label logits are optimized together with the images.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

STRATEGIES = ("auto", "known", "analytic", "joint")


def output_layer(model: ImageClassifier) -> tuple[str, nn.Linear]:
    """The classifier's last fully-connected layer (its name inside ``model.net``)."""
    num_classes = model.config["num_classes"]
    found = [
        (name, m)
        for name, m in model.net.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == num_classes
    ]
    if not found:
        raise GradleakError(
            f"model '{model.config['name']}' has no fully-connected output layer with "
            f"{num_classes} outputs; analytic labels need one"
        )
    return found[-1]


def idlg_label(
    observation: Observation, model: ImageClassifier, batch_size: int | None = None
) -> torch.Tensor:
    """iDLG's analytic label for a batch of one. Returns a (1,) int64 tensor.

    ``batch_size`` is the attacker's (known or guessed) batch size; default: the observation's
    known one, else 1.
    """
    size = batch_size or observation.known_batch_size or 1
    if size != 1:
        raise GradleakError(
            f"iDLG's analytic label needs batch size 1, the observation has {size}; "
            "use known labels, batch label recovery or joint optimization"
        )
    name, layer = output_layer(model)
    if layer.bias is not None:
        return observation.gradients[f"{name}.bias"].argmin().reshape(1)
    weight_grad = observation.gradients[f"{name}.weight"]
    return weight_grad.sum(1).argmin().reshape(1)


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


def fixed_labels(
    strategy: str, observation: Observation, model: ImageClassifier, batch_size: int
) -> torch.Tensor:
    """Labels (B,) for the ``known`` and ``analytic`` strategies."""
    if strategy == "known":
        return observation.labels.clone()
    if batch_size == 1:
        return idlg_label(observation, model, batch_size)
    from gradleak.analysis.labels import recover_labels

    return recover_labels(observation, model, batch_size=batch_size).labels


def batch_labels(observation: Observation, model: ImageClassifier, batch_size: int) -> torch.Tensor:
    """Labels (B,) for attacks without a label strategy of their own: known if the threat model
    allows, else recovered analytically (iDLG at B = 1, count-aware recovery otherwise)."""
    return fixed_labels(resolve_strategy("auto", observation), observation, model, batch_size)
