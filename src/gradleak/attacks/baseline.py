"""The gray baseline: what a "reconstruction" scores when it reads no image from the gradient.

Every image is flat gray (``level`` in every channel); the labels come as every attack's do
(known, or read off the output layer), so its label accuracy is the gradient's label leak alone.
Its PSNR against the truth is a property of the images, not of the leak: an attack's PSNR says
something only above it (the reference row of the learned-inversion study). Closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradleak.attacks.base import Attack, AttackContext, Reconstruction, requirement
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import LABELS


@dataclass(frozen=True)
class GraySettings:
    """Settings of :class:`GrayBaseline`.

    Attributes:
        level: the pixel value of every image, in [0, 1].
    """

    level: float = 0.5


@requirement("a gray level in [0, 1]")
def LEVEL(context: AttackContext) -> str | None:
    level = context.settings.level
    return None if 0 <= level <= 1 else f"the gray level must lie in [0, 1], got {level}"


@register_attack
class GrayBaseline(Attack):
    """Gray baseline: flat gray images, the PSNR floor any reconstruction must beat.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W) all ``level``, labels (B,).

    Examples::
        >>> floor = GrayBaseline()(observation)
        >>> score_batch(floor.images, truth).psnr.mean()  # what "no leak" scores
    """

    name = "gray"
    defaults = GraySettings()
    requirements = (LABELS, LEVEL)
    expected = "flat gray images: the PSNR an attack must beat on these images"
    reads_updates = True  # reads nothing from the observation but its labels

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        shape = (context.batch_size, *context.model.input_shape)
        labels = batch_labels(context.observation, context.model, context.batch_size)
        context.progress(1, 1)
        return Reconstruction(
            images=torch.full(shape, float(context.settings.level)),
            labels=labels.long(),
            attack=self.name,
            iterations=0,
        )
