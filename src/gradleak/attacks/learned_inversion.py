"""Learning to Invert (Wu, Chen, Guo and Weinberger, UAI 2023), https://arxiv.org/abs/2210.10880.

A network trained on the attacker's auxiliary data maps the (feature-hashed) gradient of a fixed
model straight to the client's batch (:mod:`gradleak.learned`); one forward pass, milliseconds.
Optionally its output starts Inverting Gradients (cosine distance + TV, signed Adam) instead of
noise. When the threat model hides the batch size, the inverter's batch-size head guesses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

from gradleak.attacks.base import AttackContext, Reconstruction, requirement
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.labels import fixed_labels, resolve_strategy
from gradleak.attacks.matching import (
    GradientMatchingAttack,
    MatchingSettings,
    Stage,
    free_pixels,
)
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import artifact
from gradleak.errors import GradleakError
from gradleak.threat import Observation

REFINEMENTS = ("none", "ig")
INVERTER = artifact("inverter", "inverter", "train-inverter")


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


@requirement("an inverter trained for the observation's model")
def INVERTER_FITS(context: AttackContext) -> str | None:
    if not context.settings.inverter:
        return None  # INVERTER says why
    try:
        context.notes["weight_drift"] = _inverter(context.settings).check(context.observation)
    except GradleakError as err:
        return str(err)
    return None


@requirement("labels other than 'joint' when nothing is optimized")
def FIXED_LABELS(context: AttackContext) -> str | None:
    s = context.settings
    if s.refine == "none" and s.labels == "joint":
        return "refine 'none' optimizes nothing: labels must not be 'joint'"
    if s.refine not in REFINEMENTS:
        return f"unknown refine {s.refine!r}; choose one of {REFINEMENTS}"
    return None


def _inverter(settings: LearnedSettings):
    """The inverter named by ``settings`` (read once per file version and process)."""
    from gradleak.learned import cached_inverter

    return cached_inverter(settings.inverter)


@register_attack
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
    #: On a trained network the inverter's images are kept as they are: 300 steps of Inverting
    #: Gradients moved the PSNR by -0.5 to +0.6 dB (median +0.2) on the trained ResNet-20, for
    #: 45 s more per image (``benchmarks/results/realistic.md``).
    trained_recipe = {"refine": "none"}
    defaults = LearnedSettings(**dataclasses.asdict(InvertingGradients.defaults))
    requirements = (*GradientMatchingAttack.requirements, INVERTER, INVERTER_FITS, FIXED_LABELS)
    expected = "the inverter's images in milliseconds (refine='ig': then Inverting Gradients)"

    def guess_batch_size(self, observation: Observation) -> int | None:
        if not self.settings.inverter:
            return None
        return _inverter(self.settings).predict_batch_size(observation)

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        inverter = _inverter(context.settings)
        probabilities = inverter.batch_size_probabilities(context.observation)
        notes = {
            "predicted_batch_size": int(probabilities.argmax()) + 1,
            "batch_size_probabilities": [round(float(p), 4) for p in probabilities],
        }
        if context.settings.refine == "ig":
            result = super().reconstruct(context)
            result.notes.update(notes)
            return result
        images = inverter.invert(context.observation, context.batch_size)
        strategy = resolve_strategy(context.settings.labels, context.observation)
        labels = fixed_labels(strategy, context.observation, context.model, context.batch_size)
        context.progress(1, 1)  # one forward pass: done
        return Reconstruction(
            images=images, labels=labels.long(), attack=self.name, iterations=0, notes=notes
        )

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        """Inverting Gradients from the inverter's images (every restart starts there)."""
        start = _inverter(context.settings).invert(context.observation, context.batch_size)
        yield Stage(free_pixels(context, init=start), context.settings.iterations, name="ig")
