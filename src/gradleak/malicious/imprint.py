"""Imprint (Fowl et al., ICLR 2022, "Robbing the Fed: Directly Obtaining Private Data in
Federated Learning with Modified Models", sec. 3), with several statistics.

The server puts a block of ReLU neurons in front of the model. A group of neurons measures one
linear image statistic ``s(x) = a . x`` (of the normalized pixels) against thresholds,
``h_i = relu(s(x) - t_i)`` with ``t_1 < t_2 < ...``, and every neuron feeds the network through
one shared direction, so that an image's gradient reaches every neuron with one factor ``c_n``.
Then ``dL/dW_i = sum_{n: s_n > t_i} c_n x_n / B`` (cumulative over bins), and the difference of
consecutive rows, divided by the difference of their bias gradients, is the image alone in bin
``[t_i, t_(i+1))`` (eq. 4); it holds through secure aggregation, the bins separating the images
of every client.

Fowl et al. use one statistic (``statistics=1``). gradleak splits the neurons over several
(default 3: the image mean and random directions orthogonal to it), so that each image falls in
one bin per statistic: an image that shares its bin in one statistic is often alone in another,
and once read it is subtracted from its bins everywhere (a peeling decoder, see
:mod:`gradleak.attacks.imprint`). The thresholds are quantiles of each statistic measured on the
server's auxiliary images (``data=``), which puts equal shares of images in every bin.
"""

from __future__ import annotations

import math

import torch

from gradleak.errors import GradleakError
from gradleak.malicious.blocks import OPEN, insert_block, restore_weights
from gradleak.malicious.registry import ServerContext, register_server
from gradleak.models import ImageClassifier

#: Random crops of the bundled photos the server calibrates on by default (no download).
BUNDLED_CROPS = 4096


@register_server(
    "imprint",
    "Fowl et al. 2022 (Robbing the Fed): bins on image statistics before the model; "
    "statistics=1 is the paper's, data=SPEC the server's images for the bins (e.g. cifar10:aux)",
    attack="imprint",
)
def imprint(
    model: ImageClassifier,
    context: ServerContext,
    *,
    bins: int = 128,
    statistics: int = 3,
    structure: str = "sparse",
    data: str = "bundled",
    gain: float = 1e-3,
) -> ImageClassifier:
    """``model`` behind an imprint block of ``bins`` neurons.

    Args:
        bins: measurement neurons in all, split evenly over the statistics.
        statistics: how many image statistics the bins measure (1: Fowl et al.'s imprint).
        structure: ``"sparse"``: each neuron responds between its threshold and the next
            (``clamp(s - t_i, 0, t_(i+1) - t_i)``), so its gradient holds its bin's images
            alone, however small their gradients; ``"cumulative"``: ReLU neurons (Fowl et al.'s
            main design), bins isolated by differences, where images the model already fits
            (tiny gradients) drown in the others' round-off.
        data: the server's auxiliary images whose statistics place the thresholds:
            ``"bundled"`` (random crops of the photos shipped with scikit-image) or any image
            source of :func:`gradleak.data.auxiliary.auxiliary_images` (``cifar10:aux``, a
            folder, ...), without the client's images.
        gain: norm of the direction the block adds its output along (the model's change).
    """
    if not isinstance(statistics, int) or not 1 <= statistics <= 64:
        raise GradleakError(f"imprint measures 1 to 64 statistics, got {statistics!r}")
    if not isinstance(bins, int) or not 2 * statistics <= bins <= 65536:
        raise GradleakError(
            f"imprint needs 2 to 65536 bins, at least 2 per statistic; got {bins!r}"
        )
    if not isinstance(gain, int | float) or not 0 < gain <= 1:
        raise GradleakError(f"imprint's gain must lie in (0, 1], got {gain!r}")
    if structure not in ("sparse", "cumulative"):
        raise GradleakError(f"imprint's structure is sparse or cumulative, got {structure!r}")
    size = math.prod(model.input_shape)
    directions = statistic_directions(size, statistics, context.generator)
    auxiliary = _auxiliary(model, str(data), context)
    if len(auxiliary) < bins // statistics:
        raise GradleakError(
            f"imprint places {bins // statistics} bins per statistic on the server's images; "
            f"{data!r} has only {len(auxiliary)}"
        )
    observed = _normalized(model, auxiliary).double() @ directions.T  # (N, statistics)
    rows, thresholds, ceilings = [], [], []
    for j, share in enumerate(_split(bins, statistics)):
        lowest = _lowest(model, directions[j])
        levels = torch.arange(1, share, dtype=torch.float64) / share
        edges = torch.cat([lowest.view(1), torch.quantile(observed[:, j], levels)])
        thresholds.append(edges)
        rows.append(directions[j].expand(share, size))
        widths = torch.cat([edges.diff(), torch.tensor([OPEN], dtype=torch.float64)])
        ceilings.append(widths if structure == "sparse" else torch.full_like(widths, OPEN))
    measure = (torch.cat(rows).float(), -torch.cat(thresholds).float())
    restore = restore_weights(bins, size, float(gain), context.generator, shared=True)
    record = {
        "name": "imprint",
        "bins": bins,
        "statistics": statistics,
        "structure": structure,
        "data": str(data),
        "gain": gain,
        "units": bins,
    }
    return insert_block(model, record, measure, restore, torch.cat(ceilings).float())


def statistic_directions(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, size)`` orthonormal directions: the mean (``1 / sqrt(size)`` everywhere), then
    random directions orthogonal to it and to each other."""
    basis = torch.randn(size, count, generator=generator, dtype=torch.float64)
    basis[:, 0] = 1.0
    q, _ = torch.linalg.qr(basis)
    q = q * torch.sign(q[0])  # the mean direction positive (the others' signs are arbitrary)
    return q.T


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if j < total % parts else 0) for j in range(parts)]


def _lowest(model: ImageClassifier, direction: torch.Tensor) -> torch.Tensor:
    """A threshold below the statistic of any image in [0, 1] (minus a margin of 1)."""
    channels, height, width = model.input_shape
    pixels = height * width
    mean = model.mean.detach().cpu().double().view(channels, 1).expand(channels, pixels)
    std = model.std.detach().cpu().double().view(channels, 1).expand(channels, pixels)
    low, high = (-mean / std).reshape(-1), ((1 - mean) / std).reshape(-1)
    return torch.minimum(direction * low, direction * high).sum() - 1.0


def _normalized(model: ImageClassifier, images: torch.Tensor) -> torch.Tensor:
    mean, std = model.mean.detach().cpu(), model.std.detach().cpu()
    return ((images - mean) / std).flatten(1)


def _auxiliary(model: ImageClassifier, data: str, context: ServerContext) -> torch.Tensor:
    """The server's images (N, C, H, W) in [0, 1]."""
    channels, size, _ = model.input_shape
    if data.lower() == "bundled":
        from gradleak.data.bundled import bundled_crops  # lazy: needs Pillow

        return bundled_crops(BUNDLED_CROPS, size, channels)
    from gradleak.data.auxiliary import auxiliary_images

    return auxiliary_images(data, size=size, channels=channels, exclude=context.private).images
