"""GIAS: Gradient Inversion with Generative Image Prior (Jeon, Kim, Lee, Heo and Oh, NeurIPS
2021), https://arxiv.org/abs/2110.14962.

Two stages on a generator G pre-trained on the attacker's auxiliary data:

1. latent search: ``z* = argmin_z D(grad(G(z)), g)`` (eq. 4) with G frozen;
2. parameter search: ``theta*_b = argmin D(grad(G_theta_b(z*_b)), g) + lambda ||theta_b -
   theta_0||^2`` over one copy of the generator's weights per image, z* fixed (eq. 5).

D is the cosine gradient distance and the optimizer Adam, as in Inverting Gradients; the best
iterate (by objective) over both stages is returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gradleak.attacks.base import AttackContext
from gradleak.attacks.generative import (
    GeneratorWeights,
    LatentSearch,
    PriorSettings,
    prior_defaults,
)
from gradleak.attacks.matching import Stage
from gradleak.attacks.registry import register_attack


@dataclass(frozen=True)
class GIASSettings(PriorSettings):
    """The generative prior's settings (:class:`~gradleak.attacks.generative.PriorSettings`)
    plus:

    Attributes:
        weight_lr: Adam's step size on the generator copies (``lr`` is the latent stage's).
        weight_penalty: lambda of ``lambda ||theta - theta_0||^2``.
    """

    weight_lr: float = 3e-4
    weight_penalty: float = 1e-4


@register_attack
class GIAS(LatentSearch):
    """GIAS: latent search through a frozen generator, then per-image generator weights.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,); the generator
        must make (C, H, W) images.

    Examples::
        >>> attack = GIAS(prior="priors/cifar10.safetensors")
        >>> reconstruction = attack(observation, iterations=600, restarts=4)
    """

    name = "gias"
    defaults = prior_defaults(GIASSettings)
    expected = "images from a generator trained on auxiliary data, then its tuned copies"

    def refine(self, context: AttackContext, generator, latent, steps) -> Iterator[Stage]:
        (weight_steps,) = steps
        if weight_steps:
            s = context.settings
            weights = GeneratorWeights(generator, latent.z, s.weight_penalty)
            yield Stage(weights, weight_steps, lr=s.weight_lr, name="generator")
