"""MixUp and InstaHide: the client trains on mixtures of its own images (stage ``"data"``).

As Huang et al. (NeurIPS 2021, "Evaluating Gradient Inversion Attacks and Defenses in
Federated Learning") evaluate them, after Zhang et al. (ICLR 2018, MixUp) and Huang,
Song, Li, Arora (ICML 2020, InstaHide): every private image ``x_1 = x_i`` becomes

    x~_i = sum_j lambda_j x_j,  j = 1..k,      y~_i = sum_j lambda_j onehot(y_j)

with ``k - 1`` partners ``x_2..x_k`` drawn without repetition from the client's own data (the
other images of the batch and ``client.partners``, Intra-InstaHide: no public images), and
coefficients ``lambda ~ Dirichlet(alpha_first, alpha, ..., alpha)`` redrawn until every
``lambda_j <= max_coefficient``. Defaults are those of Huang et al.'s code (GradAttack,
``gradattack/defenses/mixup.py`` and its CIFAR-10 scripts): ``k = 4``, Dirichlet ``(3, 1, 1, 1)``,
coefficients in ``[c_1, c_2] = [0, 0.65]``; InstaHide's own code caps them at 0.65 too
(``train_inside.py --upper``). InstaHide then multiplies the mix by a random pixel-wise sign
mask ``sigma in {-1, +1}^(C x H x W)``, one per image.

The coefficients, the partners and the masks are the client's one-time secret: none of them is
recorded in the observation (its facts hold only their shapes and where partners came from).
"""

from __future__ import annotations

import numpy as np
import torch

from gradleak.defenses.client import ClientBatch
from gradleak.defenses.registry import register_defense
from gradleak.errors import GradleakError

MAX_DRAWS = 1000  # rounds of redrawing coefficients above the cap before giving up


@register_defense(
    "mixup", "data", "train on mixes of k of the client's images and labels (Huang et al. 2021)"
)
def mixup(
    images: torch.Tensor,
    targets: torch.Tensor,
    client: ClientBatch,
    *,
    k: int = 4,
    alpha: float = 1.0,
    alpha_first: float = 3.0,
    max_coefficient: float = 0.65,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Each image ``i`` replaced by ``sum_j lambda_j x_j`` (``x_1 = x_i``, ``k - 1`` partners)
    and its target by the same mix of labels (module docstring).

    Args:
        k: images per mix (Huang et al.: 4); 1 leaves the batch as it is.
        alpha: Dirichlet concentration of the partners' coefficients (Huang et al.: 1).
        alpha_first: that of the private image's own coefficient ``lambda_1`` (Huang et al.: 3).
        max_coefficient: every coefficient at most this (Huang et al.'s ``c_2``: 0.65);
            must exceed ``1 / k``.

    Shape:
        images (B, C, H, W) in [0, 1] and targets (B, C') class probabilities in; the mixes,
        still in [0, 1], and their (B, C') targets out.
    """
    return _mix("mixup", images, targets, client, k, alpha, alpha_first, max_coefficient)


@register_defense(
    "instahide", "data", "MixUp of k images, then a random pixel-wise sign flip (InstaHide)"
)
def instahide(
    images: torch.Tensor,
    targets: torch.Tensor,
    client: ClientBatch,
    *,
    k: int = 4,
    alpha: float = 1.0,
    alpha_first: float = 3.0,
    max_coefficient: float = 0.65,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Intra-InstaHide (Huang, Song, Li, Arora, ICML 2020): ``sigma * sum_j lambda_j x_j`` with
    :func:`mixup`'s mix and a uniform random sign ``sigma`` per pixel and image.

    The sign flip acts in the model's normalized input space, as both InstaHide's and Huang et
    al.'s code apply it (after ``transforms.Normalize``; flipping pixels in [0, 1] would be
    undone by their absolute value). The client's model normalizes ``(x - mean) / std`` itself
    (:class:`gradleak.models.ImageClassifier`), so the encoded image is handed to it as
    ``mean + sigma * (mix - mean)``: each mixed pixel reflected about its channel's mean (0.5
    for a model without one), which the model maps exactly to ``sigma * normalize(mix)``. With
    a mean of 0.5 these stay in [0, 1] (the encoding in [-1, 1] of a model normalizing to it);
    other means reflect some pixels out of [0, 1]. The targets are :func:`mixup`'s.

    Args: as :func:`mixup`.
    """
    mixed, mixed_targets, facts = _mix(
        "instahide", images, targets, client, k, alpha, alpha_first, max_coefficient
    )
    sign = torch.randint(0, 2, mixed.shape, generator=client.generator).mul_(2).sub_(1)
    mean = _channel_mean(client.model, mixed)
    encoded = mean + sign.to(mixed.device, mixed.dtype) * (mixed - mean)
    return encoded, mixed_targets, {**facts, "signs": "one per pixel and image (not recorded)"}


# ---------------------------------------------------------------------- parts
def _mix(name, images, targets, client, k, alpha, alpha_first, max_coefficient):
    """The mixes of ``images``/``targets`` and the facts both defenses record."""
    _check_parameters(name, k, alpha, alpha_first, max_coefficient)
    partners, partner_targets = _partners(name, client, images, targets)
    size, others = len(images), len(images) - 1 + len(partners)
    if k > 1 and others == 0:
        raise GradleakError(
            f"{name} mixes each image with k - 1 = {k - 1} others of the client's data, but the "
            "client has a single image and no partners: give more of its images "
            "(observe(..., partners=, partner_labels=)), a larger batch, or k=1"
        )
    lambdas = coefficients(size, k, alpha, alpha_first, max_coefficient, client.generator)
    chosen = _choose(size, others, k - 1, client.generator)  # (B, k - 1) into batch + partners
    index = torch.cat([torch.arange(size)[:, None], chosen], dim=1)  # (B, k)
    weights = lambdas.to(images.device, images.dtype)
    picked = _take(images, partners, index.to(images.device))  # (B, k, C, H, W)
    picked_targets = _take(targets, partner_targets, index.to(images.device))  # (B, k, C')
    mixed = torch.einsum("bk,bkchw->bchw", weights, picked)
    mixed_targets = torch.einsum("bk,bkc->bc", weights, picked_targets)
    facts = {
        "k": k,
        "alpha": alpha,
        "alpha_first": alpha_first,
        "max_coefficient": max_coefficient,
        "coefficients": f"{size} x {k}, rows on the simplex (not recorded)",
        "partners_from": "batch and partners" if len(partners) else "batch",
        "partners_repeat": k - 1 > others,
    }
    return mixed, mixed_targets, facts


def coefficients(
    n: int,
    k: int,
    alpha: float,
    alpha_first: float,
    max_coefficient: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(n, k) float64 rows ``~ Dirichlet(alpha_first, alpha, ..., alpha)``, rows with a
    coefficient above ``max_coefficient`` redrawn (Huang et al.'s rejection sampling; no cap
    for k = 1); seeded by ``generator``."""
    if k == 1:
        return torch.ones(n, 1, dtype=torch.float64)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    concentration = [alpha_first] + [alpha] * (k - 1)
    lambdas = rng.dirichlet(concentration, size=n)
    for _ in range(MAX_DRAWS):
        over = lambdas.max(axis=1) > max_coefficient
        if not over.any():
            return torch.from_numpy(lambdas)
        lambdas[over] = rng.dirichlet(concentration, size=int(over.sum()))
    raise GradleakError(
        f"mixing coefficients Dirichlet({alpha_first}, {alpha}, ...) of k={k} images rarely stay "
        f"below max_coefficient={max_coefficient}: raise it or lower alpha_first"
    )


def _check_parameters(name, k, alpha, alpha_first, max_coefficient) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise GradleakError(f"{name}: k (images per mix) must be an integer >= 1, got {k!r}")
    for key, value in (("alpha", alpha), ("alpha_first", alpha_first)):
        if not isinstance(value, int | float) or not value > 0:
            raise GradleakError(
                f"{name}: {key} (a Dirichlet concentration) must be > 0, got {value!r}"
            )
    if not isinstance(max_coefficient, int | float) or (k > 1 and not 1 / k < max_coefficient <= 1):
        raise GradleakError(
            f"{name}: max_coefficient must lie in (1/k, 1] = ({1 / k:.3g}, 1] (k coefficients "
            f"summing to 1 cannot all stay at or below 1/k), got {max_coefficient!r}"
        )


def _partners(name, client: ClientBatch, images, targets):
    """The client's partner images (P, C, H, W) and one-hot targets (P, C'), P possibly 0."""
    partners, labels = client.partners, client.partner_labels
    shape = (0, *images.shape[1:])
    if partners is None or len(partners) == 0:
        return images.new_zeros(shape), targets.new_zeros((0, targets.shape[1]))
    if tuple(partners.shape[1:]) != tuple(images.shape[1:]):
        raise GradleakError(
            f"{name}: partner images of shape {list(partners.shape[1:])} do not match the "
            f"batch's {list(images.shape[1:])}"
        )
    if labels is None:
        raise GradleakError(
            f"{name} mixes the partners' labels into the targets: give partner_labels with the "
            "partners (observe(..., partners=, partner_labels=))"
        )
    labels = torch.as_tensor(labels)
    classes = targets.shape[1]
    if labels.is_floating_point() or labels.shape != (len(partners),):
        raise GradleakError(
            f"{name}: partner_labels must be {len(partners)} integer labels, got shape "
            f"{list(labels.shape)} and dtype {labels.dtype}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise GradleakError(f"{name}: partner_labels must lie in [0, {classes})")
    onehot = torch.nn.functional.one_hot(labels.long(), classes)
    return partners.to(images.device, images.dtype), onehot.to(targets.device, targets.dtype)


def _choose(size: int, others: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """(size, count) indices into the ``others + 1`` candidates (the batch, then the partners)
    that skip row ``i`` itself: distinct where there are enough others, else with repeats."""
    total = others + 1
    if count == 0:
        return torch.zeros(size, 0, dtype=torch.long)
    rows = torch.arange(size)
    if others >= count:
        scores = torch.rand(size, total, generator=generator)
        scores[rows, rows] = 2.0  # never the image itself: a uniform draw without repetition
        return scores.topk(count, dim=1, largest=False).indices
    drawn = torch.randint(0, others, (size, count), generator=generator)
    return drawn + (drawn >= rows[:, None]).long()  # skip row i


def _take(batch: torch.Tensor, partners: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``cat([batch, partners])[index]`` without copying the partners."""
    flat = index.reshape(-1)
    inside = flat < len(batch)
    out = batch.new_empty((len(flat), *batch.shape[1:]))
    out[inside] = batch[flat[inside]]
    out[~inside] = partners[flat[~inside] - len(batch)]
    return out.view(*index.shape, *batch.shape[1:])


def _channel_mean(model, images: torch.Tensor) -> torch.Tensor:
    """The model's per-channel input mean (1, C, 1, 1), 0.5 for a model without one."""
    mean = getattr(model, "mean", None)
    if not isinstance(mean, torch.Tensor):
        return torch.full((1, images.shape[1], 1, 1), 0.5, dtype=images.dtype, device=images.device)
    return mean.detach().to(images.device, images.dtype).reshape(1, -1, 1, 1)
