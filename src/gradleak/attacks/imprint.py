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
from gradleak.malicious.blocks import inserted_layer


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


@dataclass
class _Statistic:
    """One statistic's bins: thresholds (K,) ascending, and per bin the weight-gradient sum
    (K, C H W) and bias-gradient sum (K,) of the images in it (float64)."""

    direction: torch.Tensor
    thresholds: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def bin_of(self, inputs: torch.Tensor) -> torch.Tensor:
        values = inputs @ self.direction
        return (torch.searchsorted(self.thresholds, values, right=True) - 1).clamp(min=0)


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
        replay = Replay.of(context)
        read, classes = self._peel(context, statistics, replay)
        rest = self._mixtures(statistics, read)
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
        layer = inserted_layer(context.model)
        rows, group = torch.unique(layer.weight.detach().double(), dim=0, return_inverse=True)
        out = []
        for j, row in enumerate(rows):
            members = torch.nonzero(group == j).flatten()
            scale = row.norm()
            thresholds = -layer.bias.detach().double()[members] / scale
            order = thresholds.argsort()
            members, thresholds = members[order], thresholds[order]
            weight, bias = weight_grad.double()[members], bias_grad.double()[members]
            weight[:-1] -= weight[1:].clone()  # bin [t_i, t_(i+1)) alone
            bias[:-1] -= bias[1:].clone()
            out.append(_Statistic(row / scale, thresholds, weight, bias))
        return out

    def _nonempty(self, statistic: _Statistic, largest: float) -> torch.Tensor:
        return torch.nonzero(statistic.bias.abs() > self.settings.tolerance * largest).flatten()

    def _peel(self, context, statistics, replay):
        """Single images read off the bins, each subtracted from its bins in every statistic
        once read; and the class the replay matched (None without a replay)."""
        largest = max(float(s.bias.abs().max()) for s in statistics)
        read: list[torch.Tensor] = []
        classes: list[int | None] = []
        while len(read) < context.batch_size:
            found = False
            for statistic in statistics:
                for k in self._nonempty(statistic, largest).tolist():
                    weight = statistic.bias[k].clone()
                    if abs(float(weight)) <= self.settings.tolerance * largest:
                        continue  # emptied by an earlier subtraction in this sweep
                    reading = statistic.weight[k] / weight
                    label = self._single(context, statistics, statistic, reading, weight, replay)
                    if label is False:
                        continue
                    for other in statistics:
                        b = int(other.bin_of(reading[None])[0])
                        other.weight[b] -= weight * reading
                        other.bias[b] -= weight
                    read.append(reading)
                    classes.append(label)
                    found = True
            if not found:
                break
        return read, classes

    def _single(self, context, statistics, statistic, reading, weight, replay):
        """The class whose replay gives the bin's weight (a single image), None when it is one
        without a replay, False when it is not one."""
        if replay is not None:
            per_class = replay.weights(reading[None], replay.directions[:1])[0] / context.batch_size
            error = (per_class - weight).abs() / weight.abs()
            best = int(error.argmin())
            return best if float(error[best]) <= self.settings.match else False
        for other in statistics:  # no replay: the same image alone in another statistic
            if other is statistic:
                continue
            b = int(other.bin_of(reading[None])[0])
            if other.bias[b].abs() > 0:
                again = other.weight[b] / other.bias[b]
                if torch.allclose(again, reading, rtol=0, atol=self.settings.same):
                    return None
        return False

    def _mixtures(self, statistics, read) -> torch.Tensor:
        """Readings of the bins left, largest weight first (mixtures or unconfirmed images)."""
        largest = max(float(s.bias.abs().max()) for s in statistics) or 1.0
        readings, weights = [], []
        for statistic in statistics:
            bins = self._nonempty(statistic, largest)
            readings.append(statistic.weight[bins] / statistic.bias[bins, None])
            weights.append(statistic.bias[bins].abs())
        order = torch.cat(weights).argsort(descending=True)
        return torch.cat(readings)[order]

    def guess_batch_size(self, observation) -> int | None:
        return None
