"""The mean-image baseline: the attacker's best guess when the gradient tells it nothing.

Every reconstructed image is the per-pixel mean of the attacker's auxiliary images: of all
guesses that ignore the observation, the one of least expected squared error on an image drawn
like them (the mean minimizes E|x - c|^2 over constants c), so the PSNR any attack must beat
once a defense hides everything. It is the reference of differential privacy's promise (DP-SGD,
Abadi et al. 2016, :mod:`gradleak.defenses.dp`): with small epsilon, what an attack recovers of
an image should be little more than this guess, which never saw it.
Labels come as the gray baseline's (:class:`~gradleak.attacks.baseline.GrayBaseline`): known,
or read off the output layer. Closed form.

With the default auxiliary pool ``"cifar10:aux"`` and without the CIFAR-10 training split on
disk, the pool is the shared folder's JPEG copies of the test split, whose first images are the
private batches of this project's experiments: the mean then leaves out the first
:data:`~gradleak.attacks.bn_statistics.TEST_HOLD_OUT` of them, as the BN proxy does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from gradleak.attacks.base import Attack, AttackContext, Reconstruction, requirement
from gradleak.attacks.bn_statistics import TEST_HOLD_OUT
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import LABELS
from gradleak.errors import GradleakError

DEFAULT_AUXILIARY = "cifar10:aux"


@dataclass(frozen=True)
class MeanImageSettings:
    """Settings of :class:`MeanImageBaseline`.

    Attributes:
        auxiliary: the attacker's images (a :func:`gradleak.data.auxiliary.auxiliary_images`
            spec), resized to the model's input size and channels.
    """

    auxiliary: str = DEFAULT_AUXILIARY


@requirement("auxiliary images to average (setting auxiliary)")
def AUXILIARY(context: AttackContext) -> str | None:
    channels, size = context.model.input_shape[0], context.model.input_shape[-1]
    try:
        mean_image(context.settings.auxiliary, size, channels)
    except GradleakError as err:
        return str(err)
    return None


@register_attack
class MeanImageBaseline(Attack):
    """Mean-image baseline: every image the auxiliary data's mean, what "no information" scores.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W) all the auxiliary mean,
        labels (B,).

    Examples::
        >>> reference = MeanImageBaseline()(observation)
        >>> score_batch(reference.images, truth).psnr.mean()  # what an attack must beat
    """

    name = "mean_image"
    defaults = MeanImageSettings()
    requirements = (LABELS, AUXILIARY)
    expected = "the auxiliary images' mean: the PSNR of a guess that reads nothing"
    reads_updates = True  # reads nothing from the observation but its labels

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        channels, size = context.model.input_shape[0], context.model.input_shape[-1]
        mean, count, source = mean_image(context.settings.auxiliary, size, channels)
        labels = batch_labels(context.observation, context.model, context.batch_size)
        context.progress(1, 1)
        return Reconstruction(
            images=mean.expand(context.batch_size, -1, -1, -1).clone(),
            labels=labels.long(),
            attack=self.name,
            iterations=0,
            notes={"auxiliary": f"the mean of {count} images of {source}"},
        )


@functools.lru_cache(maxsize=4)
def mean_image(spec: str, size: int, channels: int) -> tuple[torch.Tensor, int, str]:
    """The per-pixel mean (C, H, W) of the auxiliary images ``spec`` at ``size`` and
    ``channels``, how many images it averages and where they come from."""
    from gradleak.data.auxiliary import SHARED_CIFAR10_JPEG, auxiliary_images

    data = auxiliary_images(spec, size=size, channels=channels)
    images = data.images
    test_copies = spec.strip().lower() == DEFAULT_AUXILIARY and SHARED_CIFAR10_JPEG in str(
        data.source
    )
    if test_copies and len(images) > TEST_HOLD_OUT:
        images = images[TEST_HOLD_OUT:]
    mean = images.double().mean(0).to(torch.get_default_dtype())
    return mean, len(images), f"{spec!r} ({data.source})"
