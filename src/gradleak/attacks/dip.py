"""Gradient matching through a deep image prior (Ulyanov, Vedaldi and Lempitsky, CVPR 2018),
https://arxiv.org/abs/1711.10925: a data-free prior.

The candidate images are the outputs of an untrained convolutional decoder from fixed, seeded
noise inputs; the decoder's weights are optimized to match the observed gradient (cosine
distance, Adam, as in Inverting Gradients). The architecture's bias towards natural images is
the only prior: no auxiliary data. One decoder per restart makes the restart's B images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gradleak.attacks.base import AttackContext, requirement
from gradleak.attacks.generative import UntrainedNetwork, from_inverting_gradients
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings, Stage
from gradleak.attacks.registry import register_attack


@dataclass(frozen=True)
class DIPSettings(MatchingSettings):
    """Inverting Gradients' settings plus:

    Attributes:
        width: channels of the untrained decoder.
    """

    width: int = 64


@requirement("square images whose side is a power of 2, at least 4")
def POWER_OF_TWO_SIZE(context: AttackContext) -> str | None:
    size = context.model.input_shape[-1]
    if size < 4 or size & (size - 1):
        return f"the deep-image-prior decoder makes power-of-2 sizes; the model takes {size}"
    return None


@register_attack
class DeepImagePrior(GradientMatchingAttack):
    """Gradient matching over the weights of an untrained decoder (deep image prior).

    Shape:
        observation of B images (C, H, W), H = W a power of two -> images (B, C, H, W),
        labels (B,).

    Examples::
        >>> reconstruction = DeepImagePrior(width=32)(observation, iterations=500)
        >>> reconstruction.gradient_distance
    """

    name = "dip"
    defaults = from_inverting_gradients(DIPSettings, lr=0.001, signed=False, tv=0.0, iterations=600)
    requirements = (*GradientMatchingAttack.requirements, POWER_OF_TWO_SIZE)
    expected = "images from an untrained decoder (data-free prior)"

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        s = context.settings
        shape = (s.restarts, context.batch_size, *context.model.input_shape)
        network = UntrainedNetwork(shape, s.width, context.generator, context.device)
        yield Stage(network, s.iterations)
