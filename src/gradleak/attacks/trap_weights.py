"""Trap-weights attack (Boenisch et al., EuroS&P 2023, "When the Curious Abandon Honesty",
sec. IV) with a peeling decoder: images read off the rows of a server's trap-weight block
(:mod:`gradleak.malicious.trap`)."""

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
    distinct,
    made_by,
)
from gradleak.errors import GradleakError
from gradleak.gradient.linear import rows_as_inputs


@dataclass(frozen=True)
class TrapWeightsSettings:
    """Settings of :class:`TrapWeightsAttack`.

    Attributes:
        tolerance: rows whose bias gradient is below this fraction of the largest hold no image.
        match: a row holds one image when its bias gradient agrees, to this relative error,
            with the one the image read off it gives, replayed through the model, for a class.
        same: readings that agree to this (normalized input units) are one image.
        peel: subtract every image read from all its rows and read again (False: Boenisch et
            al.'s single reading of every row).
    """

    tolerance: float = 1e-6
    match: float = 1e-4
    same: float = 1e-3
    peel: bool = True


@register_attack
class TrapWeightsAttack(Attack):
    """Trap weights: every image some neuron isolates, read in closed form, peeled off.

    Boenisch et al., "When the Curious Abandon Honesty: Federated Learning Is Not Private",
    EuroS&P 2023, https://arxiv.org/abs/2112.02918. A trap neuron that one image alone activates
    holds it: ``x = (dL/dW_i) / (dL/db_i)``. A reading is one image when the model, run on it,
    gives the row's bias gradient for some class; the image's contribution to every neuron it
    activates is then subtracted (peeling), which can leave other neurons with one image.
    Without a replay (train-mode BatchNorm), readings that several neurons agree on count as
    images. ``notes["read"]`` counts the images read; mixtures follow them, then gray.

    Shape:
        observation of ``B`` images -> images (B, C, H, W) in [0, 1], labels (B,).
    """

    name = "trap_weights"
    defaults = TrapWeightsSettings()
    requirements = (made_by("trap"),)
    expected = "every image that a trap neuron isolates, exactly (more after peeling)"

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        settings = self.settings
        if not 0 <= settings.tolerance < 1 or not 0 < settings.match < 1 or settings.same <= 0:
            raise GradleakError(
                "trap_weights needs tolerance in [0, 1), match in (0, 1) and same > 0"
            )
        weight_grad, bias_grad = (g.double().clone() for g in block_gradients(context))
        floor = settings.tolerance * float(bias_grad.abs().max())
        replay = Replay.of(context)
        if replay is None:
            read, classes, rest = self._agreeing(weight_grad, bias_grad, floor)
        else:
            read, classes = self._peel(context, replay, weight_grad, bias_grad, floor)
            rest = _readings(weight_grad, bias_grad, floor)[1]
        context.progress(1, 1)
        images = assemble_batch(context, read, rest, settings.same)
        notes = {
            "read": len(read),
            "single_image_test": "replay" if replay else "several neurons agree",
            "neurons": len(bias_grad),
        }
        return Reconstruction(
            images, class_labels(context, classes), self.name, iterations=1, notes=notes
        )

    def _peel(self, context, replay, weight_grad, bias_grad, floor):
        read: list[torch.Tensor] = []
        classes: list[int] = []
        size = context.batch_size
        while len(read) < size:
            rows, readings = _readings(weight_grad, bias_grad, floor)
            if not len(rows):
                break
            per_class = replay.weights(readings, replay.directions[rows]) / size
            error = (per_class - bias_grad[rows, None]).abs() / bias_grad[rows, None].abs()
            best, labels = error.min(1)
            single = best <= self.settings.match
            if not single.any():
                break
            readings, labels = readings[single], labels[single]
            firsts, _ = distinct(readings, self.settings.same)
            for i in firsts.tolist():
                contribution = replay.contribution(readings[i], int(labels[i])) / size
                weight_grad -= contribution[:, None] * readings[i]
                bias_grad -= contribution
                read.append(readings[i])
                classes.append(int(labels[i]))
            if not self.settings.peel:
                break
        return read[:size], classes[:size]

    def _agreeing(self, weight_grad, bias_grad, floor):
        """Without a replay: readings that two or more neurons agree on, most agreed first;
        then one reading of every other group, smallest bias gradient first (a mixture sums
        several images' weights: 0.44 vs 0.31 of a batch of 64 exact on train-mode ResNet-20)."""
        readings = _readings(weight_grad, bias_grad, floor)[1]
        firsts, counts = distinct(readings, self.settings.same)
        order = counts.argsort(descending=True, stable=True)
        firsts, counts = firsts[order], counts[order]
        read = [readings[i] for i in firsts[counts >= 2].tolist()]
        single = firsts[counts < 2]
        return read, [None] * len(read), readings[single.flip(0)]


def _readings(weight_grad, bias_grad, floor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows above ``floor`` and their readings, largest bias gradient first."""
    rows, readings = rows_as_inputs(weight_grad, bias_grad, 0.0)
    keep = bias_grad[rows].abs() > floor
    rows, readings = rows[keep], readings[keep]
    order = bias_grad[rows].abs().argsort(descending=True)
    return rows[order], readings[order]
