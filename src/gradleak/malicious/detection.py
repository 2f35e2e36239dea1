"""The client's side: does the model the server sent carry a malicious modification?

:func:`detect_modifications` looks at a received model's weights (and at its answers on natural
images), never at any record of what the server did, and names what it finds, with the
evidence:

- ``imprint`` (Fowl et al. 2022): a fully-connected layer whose rows repeat one measurement
  with distinct biases, i.e. thresholds (bins) of an image statistic;
- ``trap`` (Boenisch et al. 2023): a layer on the image whose rows weigh pixels more negatively
  than positively, systematically over all its neurons, so that they rarely fire on natural
  images;
- ``fishing`` (Wen et al. 2022): a classifier head whose rows are all equal but one (the other
  classes silenced).

Seeded and trained models of the registry raise none (``tests/test_malicious.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.gradient.structure import output_layer
from gradleak.models import ImageClassifier

#: Rows whose cosine similarity exceeds this repeat one measurement.
SAME_ROW = 0.9999
#: An imprint repeats a measurement in at least this many rows.
MIN_BINS = 4
#: The rows' mean sign asymmetry, in standard errors, below which a layer on the image is a trap.
TRAP_Z = -6.0
#: ... and the median share of natural images its neurons fire on, below which.
TRAP_FIRING = 0.4
#: Natural images the checks run the model on when the caller gives none.
REFERENCE_IMAGES = 256


@dataclass(frozen=True)
class Finding:
    """One modification found: its ``name``, the ``layer`` (name in ``model.net``) and the
    ``evidence`` in words."""

    name: str
    layer: str
    evidence: str

    def as_dict(self) -> dict:
        return asdict(self)


def detect_modifications(
    model: ImageClassifier, images: torch.Tensor | None = None
) -> list[Finding]:
    """Every malicious modification found in ``model`` (empty: none): weights only, except
    that a layer whose weights look like trap weights is also run on natural images.

    Args:
        model: the model as received, weights loaded.
        images: natural images (N, C, H, W) in [0, 1] to run it on, e.g. the client's own;
            by default random crops of the photos shipped with scikit-image.
    """
    findings = []
    linear = [(n, m) for n, m in model.net.named_modules() if isinstance(m, nn.Linear)]
    for name, layer in linear:
        found = _imprint(name, layer)
        if found:
            findings.append(found)
    first = _image_layer(model)
    if first is not None:
        found = _trap(model, *first, images)
        if found:
            findings.append(found)
    found = _fishing(model)
    if found:
        findings.append(found)
    return findings


def _imprint(name: str, layer: nn.Linear) -> Finding | None:
    weight = layer.weight.detach().double().cpu()
    if layer.bias is None or len(weight) < MIN_BINS or weight.shape[1] < 2 or len(weight) > 16384:
        return None
    rows = (weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-30)).float()
    groups: list[list[int]] = []
    unassigned = torch.ones(len(rows), dtype=torch.bool)
    for start in range(0, len(rows), 1024):  # chunks keep the Gram matrix small
        similar = rows[start : start + 1024] @ rows.T > SAME_ROW
        for offset in range(len(similar)):
            i = start + offset
            if unassigned[i]:
                members = torch.nonzero(similar[offset] & unassigned).flatten()
                unassigned[members] = False
                groups.append(members.tolist())
    bias = layer.bias.detach().double().cpu()
    bins = [g for g in groups if len(g) >= MIN_BINS and len(torch.unique(bias[g])) == len(g)]
    if not bins:
        return None
    sizes = ", ".join(str(len(g)) for g in bins[:6]) + (", ..." if len(bins) > 6 else "")
    return Finding(
        "imprint",
        name,
        f"{sum(map(len, bins))} of its {len(rows)} rows repeat {len(bins)} measurement(s) "
        f"(groups of {sizes} identical rows), each row with its own bias: thresholds (bins) "
        "of an image statistic",
    )


def _image_layer(model: ImageClassifier) -> tuple[str, nn.Linear] | None:
    """The first fully-connected layer with parameters when it reads the whole image."""
    for name, module in model.net.named_modules():
        if list(module.parameters(recurse=False)):
            size = math.prod(model.input_shape)
            if isinstance(module, nn.Linear) and module.in_features == size:
                return name, module
            return None
    return None


def _trap(model, name: str, layer: nn.Linear, images: torch.Tensor | None) -> Finding | None:
    channels = model.input_shape[0]
    std = model.std.detach().double().cpu().view(channels, 1)
    rows = layer.weight.detach().double().cpu().view(len(layer.weight), channels, -1) / std
    rows = rows.flatten(1)  # weights on pixels in [0, 1]
    if len(rows) < 2:
        return None
    asymmetry = rows.sum(1) / rows.abs().sum(1).clamp_min(1e-30)
    z = float(asymmetry.mean() / (asymmetry.std().clamp_min(1e-30) / math.sqrt(len(rows))))
    if z >= TRAP_Z:
        return None
    if images is None:
        from gradleak.data.bundled import bundled_crops  # lazy: needs Pillow

        channels, size, _ = model.input_shape
        images = bundled_crops(REFERENCE_IMAGES, size, channels)
    images = images.to(model.mean.device)
    normalized = ((images - model.mean) / model.std).flatten(1)
    with torch.no_grad():
        firing = (layer(normalized) > 0).double().mean(0)
    median = float(firing.median())
    if median >= TRAP_FIRING:
        return None
    return Finding(
        "trap",
        name,
        f"its {len(rows)} neurons weigh pixels {-float(asymmetry.mean()):.1%} more negatively "
        f"than positively (z = {z:.0f}), and half of them fire on at most {median:.1%} of "
        f"{len(images)} natural images: trap weights that isolate single images",
    )


def _fishing(model: ImageClassifier) -> Finding | None:
    try:
        name, layer = output_layer(model)
    except GradleakError:  # no head to fish with
        return None
    weight = layer.weight.detach().double().cpu()
    for target in range(len(weight)):
        others = torch.cat([weight[:target], weight[target + 1 :]])
        if (
            len(others) > 1
            and bool((others == others[0]).all())
            and not torch.equal(weight[target], others[0])
        ):
            return Finding(
                "fishing",
                name,
                f"every row of the head but class {target}'s is the same "
                f"({'zero' if not others[0].any() else 'one row'}): the other classes are "
                f"silenced, the gradient keeps the images of class {target}",
            )
    return None
