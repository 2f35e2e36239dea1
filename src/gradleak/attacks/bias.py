"""The bias attack on a fully-connected layer (Phong et al. 2017; Geiping et al. 2020, sec. 3).

For ``z = W x + b`` and one sample, ``dL/dW = (dL/db) x^T`` (the blog post's equation,
Geiping et al. 2020 eq. 2): every row ``i`` with ``dL/db_i != 0`` is the layer's input scaled by
``dL/db_i``. On the first layer of an MLP this is the (normalized) image, recovered exactly.

For a batch of ``B`` samples the averaged gradient is ``sum_b delta_b x_b^T / B`` and the same
formula returns one affine mixture ``sum_b w_b x_b`` (``sum_b w_b = 1``) of the batch's inputs,
with weights set by the per-sample bias gradients: not any single image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradleak.attacks.base import Attack, AttackContext, Reconstruction
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import IMAGE_LAYER, LABELS
from gradleak.errors import GradleakError
from gradleak.gradient.linear import invert_linear_layer
from gradleak.gradient.structure import image_layer

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class BiasSettings:
    """Settings of :class:`BiasAttack`.

    Attributes:
        dtype: ``"float64"`` (default) or ``"float32"`` for the division.
    """

    dtype: str = "float64"


@register_attack
class BiasAttack(Attack):
    """Bias attack: the image read off the first fully-connected layer's gradients.

    Phong et al., "Privacy-Preserving Deep Learning via Additively Homomorphic Encryption", 2017;
    Geiping et al., "Inverting Gradients", NeurIPS 2020, https://arxiv.org/abs/2003.14053 (sec. 3).
    :func:`~gradleak.gradient.linear.invert_linear_layer` on the first layer gives the normalized
    image, mapped back to pixels through the model wrapper's mean and std. Exact for a batch of
    one. For ``B > 1`` every returned image is the same gradient-weighted mixture of the batch,
    and the reconstruction's ``notes["mixture"]`` is True.

    Labels: known when the threat model allows, else recovered analytically (iDLG at B = 1,
    count-aware batch label recovery otherwise).

    Shape:
        observation of ``B`` images (C, H, W) -> images (B, C, H, W) clamped to [0, 1], labels (B,).

    Examples::
        >>> reconstruction = BiasAttack()(observe(build_model("mlp4"), image, label))
        >>> psnr(reconstruction.images, image)  # float32 round-off only
    """

    name = "bias"
    defaults = BiasSettings()
    requirements = (LABELS, IMAGE_LAYER)
    expected = "the exact image at batch size 1, one mixture of the batch above"

    def expectation(self, context: AttackContext) -> str:
        if context.batch_size == 1:
            return "the exact image"
        return "one gradient-weighted mixture of the batch, not its images"

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        observation, model, batch_size = context.observation, context.model, context.batch_size
        settings = context.settings
        if settings.dtype not in DTYPES:
            raise GradleakError(f"dtype must be one of {sorted(DTYPES)}, got {settings.dtype!r}")
        dtype = DTYPES[settings.dtype]
        name = image_layer(model, what=self.name).name
        x = invert_linear_layer(
            observation.gradients[f"{name}.weight"], observation.gradients[f"{name}.bias"], dtype
        )
        image = x.view(model.input_shape) * model.std[0].to(dtype) + model.mean[0].to(dtype)
        images = image.float().clamp(0, 1).unsqueeze(0).repeat(batch_size, 1, 1, 1)
        context.progress(1, 1)
        return Reconstruction(
            images=images,
            labels=batch_labels(observation, model, batch_size),
            attack=self.name,
            iterations=1,
            notes={"mixture": batch_size > 1},
        )
