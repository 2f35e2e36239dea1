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
        match: a row holds one image when its bias gradient agrees, to this relative error,
            with the one the image read off it gives, replayed through the model, for a class.
        same: readings that agree to this (normalized input units) are one image.
        peel: subtract every image read from all its rows and read again (False: Boenisch et
            al.'s single reading of every row).
    """

    match: float = 1e-4
    same: float = 1e-3
    peel: bool = True


#: Round-off left in a row by peeling, relative to the weight taken out of it.
RESIDUAL = 1e-4


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
        if not 0 < settings.match < 1 or settings.same <= 0:
            raise GradleakError("trap_weights needs match in (0, 1) and same > 0")
        weight_grad, bias_grad = (g.double().clone() for g in block_gradients(context))
        floor = torch.zeros_like(bias_grad)  # a row no image reached is exactly zero
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
        """Images read off the rows and peeled off every row they activate: those whose replay
        gives the row's bias gradient for some class, and those that several untouched rows
        read alike (an image the model fits so well that its float32 gradient is round-off
        fails the replay; its rows are cleared)."""
        read: list[torch.Tensor] = []
        classes: list[int | None] = []
        size = context.batch_size
        removed = torch.zeros_like(bias_grad)  # weight taken out of each row so far
        while len(read) < size:
            rows, readings = _readings(weight_grad, bias_grad, floor + RESIDUAL * removed)
            if not len(rows):
                break
            per_class = replay.weights(readings, replay.directions[rows]) / size
            error = (per_class - bias_grad[rows, None]).abs() / bias_grad[rows, None].abs()
            best, labels = error.min(1)
            matched = best <= self.settings.match
            _, _, group = distinct(readings, self.settings.same)
            untouched = removed[rows] == 0
            agreeing = torch.bincount(group[untouched], minlength=len(rows))[group] >= 2
            accepted = torch.nonzero(matched | (untouched & agreeing)).flatten()
            if not len(accepted):
                break
            for i in distinct(readings[accepted], self.settings.same)[0].tolist():
                i = int(accepted[i])
                if matched[i]:
                    taken = replay.contribution(readings[i], int(labels[i])) / size
                    classes.append(int(labels[i]))
                else:  # the rows that read it hold it alone
                    taken = torch.zeros_like(bias_grad)
                    same = rows[(group == group[i]) & untouched]
                    taken[same] = bias_grad[same]
                    classes.append(None)
                weight_grad -= taken[:, None] * readings[i]
                bias_grad -= taken
                removed += taken.abs()
                read.append(readings[i])
            if not self.settings.peel:
                break
        return read[:size], classes[:size]

    def _agreeing(self, weight_grad, bias_grad, floor):
        """Without a replay: readings that two or more neurons agree on, most agreed first;
        then one reading of every other group, smallest bias gradient first (a mixture sums
        several images' weights: 0.44 vs 0.31 of a batch of 64 exact on train-mode ResNet-20)."""
        readings = _readings(weight_grad, bias_grad, floor)[1]
        firsts, counts, _ = distinct(readings, self.settings.same)
        order = counts.argsort(descending=True, stable=True)
        firsts, counts = firsts[order], counts[order]
        read = [readings[i] for i in firsts[counts >= 2].tolist()]
        single = firsts[counts < 2]
        return read, [None] * len(read), readings[single.flip(0)]


def _readings(weight_grad, bias_grad, floor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows above ``floor`` (one value per row) and their readings, largest bias gradient
    first."""
    rows, readings = rows_as_inputs(weight_grad, bias_grad, 0.0)
    keep = bias_grad[rows].abs() > floor[rows]
    rows, readings = rows[keep], readings[keep]
    order = bias_grad[rows].abs().argsort(descending=True)
    return rows[order], readings[order]
