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
from gradleak.attacks.generative import Features, LatentSearch, PriorSettings, prior_defaults
from gradleak.attacks.matching import Stage
from gradleak.attacks.registry import register_attack
from gradleak.errors import GradleakError


@dataclass(frozen=True)
class GIFDSettings(PriorSettings):
    """The generative prior's settings (:class:`~gradleak.attacks.generative.PriorSettings`;
    the iterations after the latent stage are split evenly over the feature stages) plus:

    Attributes:
        layers: feature stages (blocks 1..layers; at most the generator's blocks minus one).
        radii: l1 radius of each feature stage, relative to the l1 norm of its starting
            features (the last value repeats).
        feature_lr: Adam's step size on the features (``lr`` is the latent stage's).
    """

    latent_fraction: float = 0.4
    layers: int = 3
    radii: tuple[float, ...] = (0.3, 0.3, 0.3)
    feature_lr: float = 0.03


@register_attack
class GIFD(LatentSearch):
    """GIFD: latent search, then intermediate generator features in l1 balls, layer by layer.

    Shape:
        observation of B images (C, H, W) and a prior making (C, H, W) images
        -> images (B, C, H, W), labels (B,).

    Examples::
        >>> attack = GIFD(prior="priors/cifar10.safetensors", radii=(0.5,))
        >>> reconstruction = attack(observation, iterations=600)
    """

    name = "gifd"
    defaults = prior_defaults(GIFDSettings)
    expected = "images from a generator's latent, then its intermediate features in l1 balls"

    def later_stages(self, generator, settings) -> int:
        layers = min(settings.layers, len(generator.blocks) - 1)
        if layers < 0 or not settings.radii:
            raise GradleakError("gifd needs layers >= 0 and at least one l1 radius")
        return layers

    def refine(self, context: AttackContext, generator, latent, steps) -> Iterator[Stage]:
        s = context.settings
        z = latent.z.detach()
        with torch.no_grad():
            features = generator.blocks[0](z.flatten(0, 1)).unflatten(0, z.shape[:2])
        for k, count in enumerate(steps, start=1):
            if not count:
                break
            radius = s.radii[min(k - 1, len(s.radii) - 1)]
            stage = Features(generator, k, features, radius)
            yield Stage(stage, count, lr=s.feature_lr, name=f"features {k}")
            if k < len(steps):
                features = stage.next_features()
