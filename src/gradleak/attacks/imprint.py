"""Imprint attack (Fowl et al., ICLR 2022, "Robbing the Fed", eq. 4) with a peeling decoder:
the images read off the bins of a server's imprint block (:mod:`gradleak.malicious.imprint`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gradleak.attacks.base import Attack, AttackContext, Reconstruction
from gradleak.attacks.registry import register_attack
from gradleak.attacks.server_block import (
    Replay,
    assemble_batch,
    block_gradients,
    class_labels,
    made_by,
)
from gradleak.errors import GradleakError
from gradleak.malicious.blocks import OPEN, inserted_layer


@dataclass(frozen=True)
class ImprintSettings:
    """Settings of :class:`ImprintAttack`.

    Attributes:
        tolerance: bins whose bias-gradient weight is below this fraction of the largest hold
            no image (round-off).
        match: a bin holds one image when its bias-gradient weight agrees, to this relative
            error, with the one a single image of some class gives when replayed through the
            model.
        same: readings that agree to this (normalized input units) are one image.
    """

    tolerance: float = 1e-6
    match: float = 1e-4
    same: float = 1e-3


#: Round-off left in a bin by peeling, relative to the weight taken out of it.
RESIDUAL = 1e-4
#: An input this close to a bin's edge (relative to a bin's width) may lie in either
#: neighbour: the client's float32 block, not this float64 reading, decided.
BOUNDARY = 1e-4


@dataclass
class _Statistic:
    """One statistic's bins, ascending: the block's neurons that measure it, and per bin the
    weight-gradient sum (K, C H W) and bias-gradient sum (K,) of the images in it (float64),
    with how much weight peeling has taken out of each bin so far."""

    weight: torch.Tensor  # the neurons' rows (K, C H W) of the block's layer
    bias: torch.Tensor
    ceiling: torch.Tensor
    sums: torch.Tensor
    counts: torch.Tensor
    removed: torch.Tensor

    @property
    def sparse(self) -> bool:
        return bool((self.ceiling[:-1] < OPEN).all())

    def bin_of(self, reading: torch.Tensor, weight: torch.Tensor) -> int | None:
        """The bin holding the input ``reading`` (normalized) of weight ``weight``: where the
        block puts it, or, within round-off of a boundary, the neighbour that holds it."""
        z = self.weight @ reading + self.bias
        if self.sparse:
            inside = torch.nonzero((z > 0) & (z < self.ceiling)).flatten()
            if len(inside):
                found = int(inside[0])
            else:  # in a round-off gap between two bins
                found = int(torch.minimum(z.abs(), (z - self.ceiling).abs()).argmin())
            margin = torch.minimum(z[found].abs(), (z[found] - self.ceiling[found]).abs())
        else:
            found = max(0, int((z > 0).sum()) - 1)
            margin = z.abs().min()
        width = (self.bias.max() - self.bias.min()) / len(self.bias)  # a bin's mean width
        if margin > BOUNDARY * width:
            return found
        near = [b for b in (found - 1, found, found + 1) if 0 <= b < len(self.counts)]
        gain = [float(self.sums[b].norm() - (self.sums[b] - weight * reading).norm()) for b in near]
        return near[gain.index(max(gain))]


@register_attack
class ImprintAttack(Attack):
    """Imprint: the images alone in a bin of some statistic, read in closed form.

    Fowl et al., "Robbing the Fed: Directly Obtaining Private Data in Federated Learning with
    Modified Models", ICLR 2022, https://arxiv.org/abs/2110.13057. Per statistic, the bins' rows
    are cumulative, ``dL/dW_i = sum_{n: s_n > t_i} c_n x_n / B``; sorted by threshold, the
    difference of consecutive rows over that of their bias gradients reads bin ``i``: one image
    exactly, or the mixture of those sharing it. A reading is one image when the model, run on
    it, gives the bin's bias gradient for some class (``c_n / B``); it is then subtracted from
    its bin in every statistic, which can leave another image alone (peeling). Works through
    secure aggregation. Without a replay (train-mode BatchNorm), readings found in two
    statistics count as single images. Images come back read ones first, then mixtures, then
    gray; ``notes["read"]`` counts the single images read.

    Shape:
        observation of ``B`` images -> images (B, C, H, W) in [0, 1], labels (B,).
    """

    name = "imprint"
    defaults = ImprintSettings()
    requirements = (made_by("imprint"),)
    expected = "each image alone in a bin of some statistic, exactly (more after peeling)"

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        settings = self.settings
        if not 0 <= settings.tolerance < 1 or not 0 < settings.match < 1:
            raise GradleakError("imprint's tolerance must lie in [0, 1) and match in (0, 1)")
        statistics = self._statistics(context)
        largest = max(float(s.counts.abs().max()) for s in statistics) or 1.0
        replay = Replay.of(context)
        read, classes = self._peel(context, statistics, replay, largest)
        rest = self._mixtures(statistics, largest)
        context.progress(1, 1)
        images = assemble_batch(context, read, rest, settings.same)
        labels = class_labels(context, classes)
        notes = {
            "read": len(read),
            "mixtures": len(rest),
            "single_image_test": "replay" if replay else "found in two statistics",
            "bins": inserted_layer(context.model).out_features,
            "statistics": len(statistics),
        }
        return Reconstruction(images, labels, self.name, iterations=1, notes=notes)

    # ------------------------------------------------------------------ bins
    def _statistics(self, context: AttackContext) -> list[_Statistic]:
        """The block's neurons grouped by their (shared) row, each group's bins isolated."""
        weight_grad, bias_grad = block_gradients(context)
        block = context.model.net.inserted
        layer = block.measure
        weights, biases = layer.weight.detach().double(), layer.bias.detach().double()
        rows, group = torch.unique(weights, dim=0, return_inverse=True)
        out = []
        for j in range(len(rows)):
            members = torch.nonzero(group == j).flatten()
            members = members[(-biases[members]).argsort()]  # ascending thresholds
            sums, counts = weight_grad.double()[members], bias_grad.double()[members]
            statistic = _Statistic(
                weights[members], biases[members], block.ceiling.double()[members],
                sums, counts, torch.zeros_like(counts),
            )  # fmt: skip
            if not statistic.sparse:  # cumulative: bin [t_i, t_(i+1)) is a difference
                sums[:-1] -= sums[1:].clone()
                counts[:-1] -= counts[1:].clone()
            out.append(statistic)
        return out

    def _floor(self, statistic: _Statistic, largest: float) -> torch.Tensor:
        """Per bin, the weight below which it holds no image: round-off of the cumulative
        differences (``largest``: the largest bin weight before peeling), and of the images
        peeled off the bin."""
        base = 0.0 if statistic.sparse else self.settings.tolerance * largest
        return base + RESIDUAL * statistic.removed

    def _nonempty(self, statistic: _Statistic, largest: float) -> torch.Tensor:
        """Bins with an image left."""
        return torch.nonzero(statistic.counts.abs() > self._floor(statistic, largest)).flatten()

    def _peel(self, context, statistics, replay, largest: float):
        """Single images read off the bins, each subtracted from its bins in every statistic
        once read; and the class the replay matched (None without one)."""
        read: list[torch.Tensor] = []
        classes: list[int | None] = []
        while len(read) < context.batch_size:
            found = False
            for statistic in statistics:
                for k in self._nonempty(statistic, largest).tolist():
                    if statistic.counts[k].abs() <= self._floor(statistic, largest)[k]:
                        continue  # emptied by an earlier subtraction in this sweep
                    weight = statistic.counts[k].clone()
                    reading = statistic.sums[k] / weight
                    label = self._single(context, statistics, statistic, k, reading, weight, replay)
                    if label is False:
                        continue
                    for other in statistics:
                        b = other.bin_of(reading, weight)
                        other.sums[b] -= weight * reading
                        other.counts[b] -= weight
                        other.removed[b] += weight.abs()
                    read.append(reading)
                    classes.append(label)
                    found = True
            if not found:
                break
        return read[: context.batch_size], classes[: context.batch_size]

    def _single(self, context, statistics, statistic, bin_, reading, weight, replay):
        """Whether a reading is one image: the class whose replay gives the bin's weight; or,
        when no class does (no replay, or an image the model fits so well that its float32
        gradient is round-off), None if a bin of another statistic reads the same image, both
        bins untouched by peeling (residues of one image peeled off two bins agree too), else
        False."""
        if replay is not None:
            per_class = replay.weights(reading[None], replay.directions[:1])[0]
            error = (per_class / context.batch_size - weight).abs() / weight.abs()
            best = int(error.argmin())
            if float(error[best]) <= self.settings.match:
                return best
        if statistic.removed[bin_] > 0:
            return False
        for other in statistics:
            b = None if other is statistic else other.bin_of(reading, weight)
            if b is not None and other.counts[b] != 0 and other.removed[b] == 0:
                again = other.sums[b] / other.counts[b]
                if torch.allclose(again, reading, rtol=0, atol=self.settings.same):
                    return None
        return False

    def _mixtures(self, statistics, largest: float) -> torch.Tensor:
        """Readings of the bins left, largest weight first (mixtures or unconfirmed images)."""
        readings, weights = [], []
        for statistic in statistics:
            bins = self._nonempty(statistic, largest)
            readings.append(statistic.sums[bins] / statistic.counts[bins, None])
            weights.append(statistic.counts[bins].abs())
        order = torch.cat(weights).argsort(descending=True)
        return torch.cat(readings)[order]
