"""Defenses a client applies in its step, before the server sees anything.

Every defense is registered with the stage it acts at (:mod:`.registry`): the data the client
trains on, the computation of its step, or the update it sends. ``observe(..., defenses=...)``,
``gradleak observe --defense NAME[:key=value,...]``, sweeps (``defense = [...]``) and audits all
name them the same way; :mod:`gradleak.experiments.utility` trains a model with them to
measure what they cost.

- ``noise``, ``clip``, ``prune`` (:mod:`.update`): Gaussian noise, whole-update clipping, top-k
  pruning;
- ``quantize`` (:mod:`.quantize`): k-bit stochastic quantization or the sign;
- ``soteria`` (:mod:`.soteria`): Soteria's pruning of the representation layer's gradient;
- ``dp`` (:mod:`.dp`): DP-SGD computed by Opacus (``pip install "gradleak[dp]"``);
- ``mixup``, ``instahide`` (:mod:`.mixing`): the client trains on mixed images.

Records: ``observation.defense["applied"]`` lists each defense's name, parameters and facts.
"""

from __future__ import annotations

import dataclasses

import torch

# Defense modules register themselves on import (optional dependencies load inside them).
from gradleak.defenses import dp, mixing, quantize, soteria, update  # noqa: F401
from gradleak.defenses.client import ClientBatch, DefendedStep, defended_step
from gradleak.defenses.registry import (
    DEFENSES,
    Defense,
    defenses_help,
    get_defense,
    parse_defense,
    register_defense,
)
from gradleak.errors import GradleakError


def apply_defense(observation, name: str, **parameters):
    """``observation`` after the update-stage defense ``name`` (noise, clip, prune, quantize,
    soteria): the defense acts on the observed gradients as the client would have before sending
    them. Defenses of the data or the step change what the client computes: give them to
    :func:`gradleak.threat.observe` instead."""
    defense = get_defense(name)
    if defense.stage != "update":
        raise GradleakError(
            f"defense {name!r} changes the client's {defense.stage}, not its finished update: "
            "apply it when observing (observe(..., defenses=...), gradleak observe --defense)"
        )
    defense.check(parameters)
    images = observation.truth.images if observation.truth is not None else None
    client = ClientBatch(
        model=observation.build_model(),
        images=images if images is not None else torch.empty(0),
        targets=observation.labels if observation.labels is not None else torch.empty(0),
        bn_mode=observation.bn_mode,
    )
    step = defended_step(
        client,
        [(name, parameters)],
        lambda _: (observation.gradients, observation.loss),
    )
    applied = [*observation.defense.get("applied", []), *step.records]
    return dataclasses.replace(
        observation,
        gradients=step.gradients,
        defense={**observation.defense, "applied": applied},
    )


def add_noise(observation, sigma: float, *, seed: int = 0):
    """:func:`apply_defense` with ``noise``: i.i.d. N(0, sigma^2) on every entry."""
    return apply_defense(observation, "noise", sigma=sigma, seed=seed)


def clip(observation, max_norm: float):
    """:func:`apply_defense` with ``clip``: the whole update scaled to norm <= ``max_norm``."""
    return apply_defense(observation, "clip", max_norm=max_norm)


def prune(observation, keep: float):
    """:func:`apply_defense` with ``prune``: keep the ``keep`` largest fraction per layer."""
    return apply_defense(observation, "prune", keep=keep)


__all__ = [
    "DEFENSES",
    "ClientBatch",
    "DefendedStep",
    "Defense",
    "add_noise",
    "apply_defense",
    "clip",
    "defended_step",
    "defenses_help",
    "get_defense",
    "parse_defense",
    "prune",
    "register_defense",
]
