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
    PRIOR,
    PRIOR_FITS,
    GeneratorWeights,
    Latent,
    from_inverting_gradients,
    prior_generator,
    split_iterations,
)
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings, Stage
from gradleak.attacks.registry import register_attack


@dataclass(frozen=True)
class GIASSettings(MatchingSettings):
    """Inverting Gradients' settings plus:

    Attributes:
        prior: the generator artifact (``.safetensors``, from ``train_generator``).
        latent_fraction: share of the iterations spent on the latent stage.
        weight_lr: Adam's step size on the generator copies (``lr`` is the latent stage's).
        weight_penalty: lambda of ``lambda ||theta - theta_0||^2``.
    """

    prior: str = ""
    latent_fraction: float = 0.5
    weight_lr: float = 3e-4
    weight_penalty: float = 1e-4


@register_attack
class GIAS(GradientMatchingAttack):
    """GIAS: latent search through a frozen generator, then per-image generator weights.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,); the generator
        must make (C, H, W) images.

    Examples::
        >>> attack = GIAS(prior="priors/cifar10.safetensors")
        >>> reconstruction = attack(observation, iterations=600, restarts=4)
    """

    name = "gias"
    defaults = from_inverting_gradients(GIASSettings, lr=0.1, signed=False, tv=0.0, iterations=600)
    requirements = (*GradientMatchingAttack.requirements, PRIOR, PRIOR_FITS)
    expected = "images from a generator trained on auxiliary data, then its tuned copies"

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        s = context.settings
        generator = prior_generator(context)
        latent_steps, weight_steps = split_iterations(s.iterations, s.latent_fraction, 1)
        latent = Latent(generator, s.restarts, context.batch_size, context.generator)
        yield Stage(latent, latent_steps, name="latent")
        if weight_steps:
            weights = GeneratorWeights(generator, latent.z, s.weight_penalty)
            yield Stage(weights, weight_steps, lr=s.weight_lr, name="generator")
