"""GIFD: A Generative Gradient Inversion Method with Feature Domain Optimization (Fang, Chen,
Wang, Chen, Ma and Gu, ICCV 2023), https://arxiv.org/abs/2308.04699.

After GIAS's latent search (stage 0), the optimization descends the generator: stage k optimizes
the features entering block k, started from the previous stage's result and projected after every
step onto an l1 ball of radius r_k around that start (eq. 5, Duchi et al.'s exact projection).
The output of the best stage by gradient distance is kept (the engine's best-iterate tracker runs
across all stages).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gradleak.attacks.base import AttackContext
from gradleak.attacks.generative import (
    PRIOR,
    PRIOR_FITS,
    Features,
    Latent,
    from_inverting_gradients,
    prior_generator,
    split_iterations,
)
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings, Stage
from gradleak.attacks.registry import register_attack
from gradleak.errors import GradleakError


@dataclass(frozen=True)
class GIFDSettings(MatchingSettings):
    """Inverting Gradients' settings plus:

    Attributes:
        prior: the generator artifact (``.safetensors``, from ``train_generator``).
        latent_fraction: share of the iterations spent on the latent stage; the rest is split
            evenly over the feature stages.
        layers: feature stages (blocks 1..layers; at most the generator's blocks minus one).
        radii: l1 radius of each feature stage, relative to the l1 norm of its starting
            features (the last value repeats).
        feature_lr: Adam's step size on the features (``lr`` is the latent stage's).
    """

    prior: str = ""
    latent_fraction: float = 0.4
    layers: int = 3
    radii: tuple[float, ...] = (0.3, 0.3, 0.3)
    feature_lr: float = 0.03


@register_attack
class GIFD(GradientMatchingAttack):
    """GIFD: latent search, then intermediate generator features in l1 balls, layer by layer.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,); the generator
        must make (C, H, W) images.

    Examples::
        >>> attack = GIFD(prior="priors/cifar10.safetensors", radii=(0.5,))
        >>> reconstruction = attack(observation, iterations=600)
    """

    name = "gifd"
    defaults = from_inverting_gradients(GIFDSettings, lr=0.1, signed=False, tv=0.0, iterations=600)
    requirements = (*GradientMatchingAttack.requirements, PRIOR, PRIOR_FITS)
    expected = "images from a generator's latent, then its intermediate features in l1 balls"

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        s = context.settings
        generator = prior_generator(context)
        layers = min(s.layers, len(generator.blocks) - 1)
        if layers < 0 or not s.radii:
            raise GradleakError("gifd needs layers >= 0 and at least one l1 radius")
        steps = split_iterations(s.iterations, s.latent_fraction, layers)
        latent = Latent(generator, s.restarts, context.batch_size, context.generator)
        yield Stage(latent, steps[0], name="latent")
        z = latent.z.detach()
        with torch.no_grad():
            features = generator.blocks[0](z.flatten(0, 1)).unflatten(0, z.shape[:2])
        for k in range(1, layers + 1):
            if not steps[k]:
                break
            radius = s.radii[min(k - 1, len(s.radii) - 1)]
            stage = Features(generator, k, features, radius)
            yield Stage(stage, steps[k], lr=s.feature_lr, name=f"features {k}")
            if k < layers:
                features = stage.next_features()
