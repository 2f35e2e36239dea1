"""Data Leakage in Federated Averaging (Dimitrov, Balunovic, Konstantinov and Vechev, TMLR 2022),
https://openreview.net/forum?id=e7A0B99zJf.

A FedAvg client walks its n images for E epochs in an order the server does not see. The attack
keeps one set of image variables per epoch, replays the local training on them (epoch e's steps
read epoch e's variables) and matches the simulated update to the observed one, while an
order-invariant epoch prior (sec. 4.2) pulls each epoch's images, after optimally matching them
within each label, toward their mean over epochs. The reconstruction is the epochs' mean.
Labels, when hidden, are counted from the update's output layer read as the mean gradient over
the steps (:meth:`Observation.gradient_estimate`); the paper's correction for the softmax drift
during local training, simulated on dummy images, is not used: with uniform-noise dummies it
made the counts worse on every model measured (see the FL-setups issue's closing note).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from gradleak.attacks.base import AttackContext, requirement
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.labels import fixed_labels, resolve_strategy
from gradleak.attacks.matching import (
    ClientSimulator,
    GradientMatchingAttack,
    MatchingSettings,
    Stage,
)
from gradleak.attacks.parameterization import Pixels
from gradleak.attacks.registry import register_attack
from gradleak.gradient.simulation import assumed_local_training


@requirement("a FedAvg update (local training), not a single gradient")
def UPDATE(context: AttackContext) -> str | None:
    if context.observation.kind != "update":
        return f"'{context.attack}' attacks FedAvg updates; this observation is a gradient"
    return None


@dataclass(frozen=True)
class FedAvgSettings(MatchingSettings):
    """Inverting Gradients' settings (its defaults) plus the weight of the epoch prior.

    Attributes:
        epoch_prior: weight of the order-invariant epoch prior (mean squared distance of every
            epoch's matched images to their mean over epochs, in normalized pixels).
    """

    epoch_prior: float = 0.1


class EpochVariables:
    """Image variables (R, M * E * n) for M clients x E epochs x n images, client-major.

    ``images()`` is the reconstruction: per client, the mean over epochs of the epochs' images
    after matching each epoch to the first within every label (refreshed by :meth:`match`).
    """

    def __init__(
        self,
        pixels: Pixels,
        clients: int,
        epochs: int,
        per_client: int,
        labels: torch.Tensor,
        weight: float,
        match_every: int = 50,
    ):
        self.pixels, self.weight, self.match_every, self.projections = (
            pixels,
            weight,
            match_every,
            0,
        )
        self.clients, self.epochs, self.per_client = clients, epochs, per_client
        self.labels = labels.cpu()  # (M * n,) the reconstruction's labels
        restarts = pixels.data.shape[0]
        identity = torch.arange(per_client).repeat(restarts, clients, epochs, 1)
        self.permutation = identity.to(pixels.data.device)  # (R, M, E, n)

    def parameters(self) -> list[torch.Tensor]:
        return self.pixels.parameters()

    def project_(self) -> None:
        self.pixels.project_()
        self.projections += 1
        if self.epochs > 1 and self.projections % self.match_every == 0:
            self.match()

    def per_epoch(self) -> torch.Tensor:
        """(R, M, E, n, C, H, W): every epoch's images, aligned to the first epoch's order."""
        x = self.pixels.images()
        r = x.shape[0]
        x = x.view(r, self.clients, self.epochs, self.per_client, *x.shape[2:])
        index = self.permutation.view(*self.permutation.shape, 1, 1, 1).expand_as(x)
        return x.gather(3, index)

    def images(self) -> torch.Tensor:
        aligned = self.per_epoch().mean(2)
        return aligned.reshape(aligned.shape[0], -1, *aligned.shape[3:])

    def penalty(self) -> torch.Tensor:
        """The weighted epoch prior (R,): mean squared distance of the aligned epochs to their
        mean, in the model's normalized input space."""
        aligned = self.per_epoch()
        spread = (aligned - aligned.mean(2, keepdim=True)) / self.pixels.std
        return self.weight * spread.pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def match(self) -> None:
        """Re-align every later epoch to the first one, within each label (Hungarian on MSE)."""
        x = self.pixels.images().cpu()
        r = x.shape[0]
        x = x.view(r, self.clients, self.epochs, self.per_client, -1)
        labels = self.labels.view(self.clients, self.per_client)
        permutation = self.permutation.cpu().clone()
        for i in range(r):
            for c in range(self.clients):
                reference = x[i, c, 0]
                for e in range(1, self.epochs):
                    for label in labels[c].unique():
                        slots = (labels[c] == label).nonzero().flatten()
                        cost = torch.cdist(reference[slots], x[i, c, e][slots]).numpy()
                        _, columns = linear_sum_assignment(cost)
                        permutation[i, c, e, slots] = slots[torch.as_tensor(columns)]
        self.permutation = permutation.to(self.permutation.device)


@register_attack
class FedAvgLeakage(GradientMatchingAttack):
    """Dimitrov et al. 2022: per-epoch image variables tied by an order-invariant epoch prior.

    Replays the client's local training (recorded or assumed, see ``notes["assumed"]``) with
    epoch e's steps reading epoch e's variables, on Inverting Gradients' objective and optimizer,
    plus the epoch prior. Labels: known, or counted from the update.

    Shape:
        update observation of B images -> images (B, C, H, W), labels (B,).
    """

    name = "fedavg_leakage"
    expected = "FedAvg updates over several epochs; the epoch prior helps when E > 1"
    requirements = (*GradientMatchingAttack.requirements, UPDATE)
    needs_update = True
    defaults = FedAvgSettings(**dataclasses.asdict(InvertingGradients.defaults))

    def _layout(self, context: AttackContext) -> tuple[int, int, list[list[int]]]:
        """(epochs, images per client, the steps' indices into a client's E * n variables)."""
        training, _, _ = assumed_local_training(context.observation)
        n = context.batch_size // context.observation.clients
        per_epoch = math.ceil(n / training.batch_size)
        steps = training.num_steps(n)
        epochs = math.ceil(steps / per_epoch)
        order = [
            [k // per_epoch * n + i for i in range(n)][
                (k % per_epoch) * training.batch_size : (k % per_epoch + 1) * training.batch_size
            ]
            for k in range(steps)
        ]
        return epochs, n, order

    def simulator(self, context: AttackContext) -> ClientSimulator:
        _, _, order = self._layout(context)
        return ClientSimulator(
            context.model,
            batch_statistics=context.settings.bn > 0,
            observation=context.observation,
            lr_guess=context.settings.local_lr,
            order=order,
        )

    def replayed(self, parameterization, images, labels):
        """Every epoch's own variables, with the labels repeated per epoch."""
        return parameterization.pixels.images(), _per_epoch(parameterization, labels)

    def expanded(self, parameterization, images, labels):
        """The reconstruction (the epochs' mean) repeated for every epoch."""
        return _per_epoch(parameterization, images), _per_epoch(parameterization, labels)

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        settings = context.settings
        epochs, n, _ = self._layout(context)
        clients = context.observation.clients
        pixels = Pixels(
            (settings.restarts, clients * epochs * n, *context.model.input_shape),
            init=settings.init,
            boxed=settings.boxed,
            generator=context.generator,
            mean=context.model.mean,
            std=context.model.std,
            device=context.device,
        )
        strategy = resolve_strategy(settings.labels, context.observation)
        if strategy == "joint":  # labels unknown while matching: one group
            labels = torch.zeros(context.batch_size, dtype=torch.long)
        else:
            labels = fixed_labels(strategy, context.observation, context.model, context.batch_size)
        context.notes["epochs"] = epochs
        variables = EpochVariables(pixels, clients, epochs, n, labels, settings.epoch_prior)
        yield Stage(variables, settings.iterations)


def _per_epoch(variables: EpochVariables, values: torch.Tensor) -> torch.Tensor:
    """(R, M * n, ...) -> (R, M * E * n, ...): each client's n values repeated for every epoch
    (labels, label logits or images)."""
    r, rest = values.shape[0], values.shape[2:]
    m, e, n = variables.clients, variables.epochs, variables.per_client
    tiled = values.reshape(r, m, 1, n, *rest).expand(r, m, e, n, *rest)
    return tiled.reshape(r, m * e * n, *rest)
