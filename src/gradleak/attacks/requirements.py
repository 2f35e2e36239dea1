"""Needs that several attacks share, each a :class:`~gradleak.attacks.base.Requirement`.

An attack lists what it needs in ``requirements``; :meth:`Attack.check` asks each one about the
case at hand and collects the reasons it does not apply. Needs particular to one attack are
declared in that attack's module with the same :func:`~gradleak.attacks.base.requirement`
decorator.
"""

from __future__ import annotations

from pathlib import Path

from gradleak.attacks.base import AttackContext, Requirement, requirement
from gradleak.attacks.labels import resolve_strategy
from gradleak.errors import GradleakError
from gradleak.gradient.structure import feedforward_layers, image_layer, output_layer
from gradleak.learning import read_card


@requirement("labels known, or readable from the output layer's gradient")
def LABELS(context: AttackContext) -> str | None:
    strategy = getattr(context.settings, "labels", "auto")
    try:
        if resolve_strategy(strategy, context.observation) != "analytic":
            return None
        _, layer = output_layer(context.model)
    except GradleakError as err:
        return str(err)
    if context.batch_size > 1 and layer.bias is None:
        return (
            "the labels are hidden and the output layer has no bias: batch label recovery "
            "needs its bias gradient (use labels='joint' or known labels)"
        )
    return None


@requirement("batch size 1")
def BATCH_SIZE_ONE(context: AttackContext) -> str | None:
    if context.batch_size != 1:
        return f"'{context.attack}' reconstructs a batch of one; the batch has {context.batch_size}"
    return None


def _structure(description: str, find) -> Requirement:
    """The need for a part of the network that ``find(model, what=...)`` locates or raises
    GradleakError about (:mod:`gradleak.gradient.structure`)."""

    @requirement(description)
    def needs(context: AttackContext) -> str | None:
        try:
            find(context.model, what=f"'{context.attack}'")
        except GradleakError as err:
            return str(err)
        return None

    return needs


IMAGE_LAYER = _structure(
    "a first layer that is fully connected, with a bias, on the whole image", image_layer
)
FEEDFORWARD = _structure(
    "a feed-forward chain of conv/FC layers with invertible activations", feedforward_layers
)


def artifact(setting: str, kind: str, command: str) -> Requirement:
    """The need for a trained ``kind`` file (an artifact card of that kind) named by the attack
    setting ``setting``; ``command`` is the CLI command that trains one."""

    @requirement(f"a {kind} file ({setting}=, from `gradleak {command}`)")
    def needs(context: AttackContext) -> str | None:
        path = getattr(context.settings, setting)
        if not path:
            return (
                f"'{context.attack}' needs a trained {kind}: pass {setting}=<file> (--{setting}; "
                f"train one with `gradleak {command}`)"
            )
        try:
            card = read_card(Path(path).expanduser())
        except GradleakError as err:
            return str(err)
        if card.get("kind") != kind:
            return f"{path} holds a {card.get('kind')!r}, not a {kind!r}"
        return None

    return needs
