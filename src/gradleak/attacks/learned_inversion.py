"""Learning to Invert (Wu, Chen, Guo and Weinberger, UAI 2023), https://arxiv.org/abs/2210.10880.

A network trained on the attacker's auxiliary data maps the (feature-hashed) gradient of a fixed
model straight to the client's batch (:mod:`gradleak.learned`); one forward pass, milliseconds.
Optionally its output starts Inverting Gradients (cosine distance + TV, signed Adam) instead of
noise. When the threat model hides the batch size, the inverter's batch-size head guesses it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gradleak.attacks.base import ProgressCallback, Reconstruction
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.labels import fixed_labels, resolve_strategy
from gradleak.attacks.matching import (
    GradientMatchingAttack,
    MatchingContext,
    MatchingSettings,
    Stage,
)
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

REFINEMENTS = ("none", "ig")


@dataclass(frozen=True)
class LearnedSettings(MatchingSettings):
    """Inverting Gradients' settings plus the inverter.

    Attributes:
        inverter: path of an inverter file written by :func:`gradleak.learned.train_inverter`.
        refine: ``"none"`` (the inverter's output alone) or ``"ig"`` (Inverting Gradients
            started from it).
    """

    inverter: str = ""
    refine: str = "ig"


class LearnedInversion(GradientMatchingAttack):
    """Learned inversion: a trained inverter's output, optionally refined by Inverting Gradients.

    Labels follow the shared strategy (``auto``: known if allowed, else analytic). With refine
    ``"none"`` no optimization runs (``iterations`` is reported as 0).

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,).

    Examples::
        >>> attack = LearnedInversion(inverter="lenet.safetensors", refine="none")
        >>> reconstruction = attack(observation)
    """

    name = "learned"
    defaults = LearnedSettings(**dataclasses.asdict(InvertingGradients.defaults))

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self._inverter = None

    def inverter(self):
        """The inverter named by the settings (read once)."""
        from gradleak.learned import load_inverter

        path = self.settings.inverter
        if not path:
            raise GradleakError(
                "attack 'learned' needs an inverter: pass inverter=<file> (train one with "
                "gradleak.learned.train_inverter)"
            )
        if self._inverter is None or self._inverter[0] != path:
            self._inverter = (path, load_inverter(os.fspath(path)))
        return self._inverter[1]

    def guess_batch_size(self, observation: Observation) -> int | None:
        return self.inverter().predict_batch_size(observation)

    def _notes(self, observation: Observation) -> dict:
        inverter = self.inverter()
        drift = inverter.check(observation)
        probabilities = inverter.batch_size_probabilities(observation)
        return {
            "predicted_batch_size": int(probabilities.argmax()) + 1,
            "batch_size_probabilities": [round(float(p), 4) for p in probabilities],
            "weight_drift": drift,
        }

    def reconstruct(
        self,
        observation: Observation,
        model: ImageClassifier,
        batch_size: int,
        settings: LearnedSettings,
        generator: torch.Generator,
        callback: ProgressCallback | None,
    ) -> Reconstruction:
        if settings.refine not in REFINEMENTS:
            raise GradleakError(f"unknown refine {settings.refine!r}; choose one of {REFINEMENTS}")
        notes = self._notes(observation)
        if settings.refine == "ig":
            result = super().reconstruct(
                observation, model, batch_size, settings, generator, callback
            )
            result.notes.update(notes)
            return result
        images = self.inverter().invert(observation, batch_size)
        strategy = resolve_strategy(settings.labels, observation)
        if strategy == "joint":
            raise GradleakError("refine 'none' optimizes nothing: labels must not be 'joint'")
        labels = fixed_labels(strategy, observation, model, batch_size)
        if callback is not None:  # one forward pass: done
            callback(1, 1, float("nan"))
        return Reconstruction(
            images=images, labels=labels.long(), attack=self.name, iterations=0, notes=notes
        )

    def stages(self, context: MatchingContext) -> Iterator[Stage]:
        """Inverting Gradients from the inverter's images (every restart starts there)."""
        start = self.inverter().invert(context.observation, context.batch_size)
        yield Stage(context.pixels(init=start), context.settings.iterations, name="ig")
