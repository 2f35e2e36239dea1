"""FedAvg local training: what a client does between receiving weights and sending them back.

McMahan et al. 2017 ("Communication-Efficient Learning of Deep Networks from Decentralized Data"):
the client runs K optimizer steps (or E epochs) over its N images in local batches of b, and sends
its new weights; the server sees the difference. gradleak records that difference as the
*pseudo-gradient* ``w_server - w_client`` (for one plain SGD step it equals ``lr * gradient``).

Two implementations of the same training, kept apart on purpose:

- :func:`train_locally` is the client: a real ``torch.optim`` optimizer stepping an ``nn.Module``
  (BatchNorm running statistics update as in real training);
- :func:`unrolled_update` is the attacker's replay: functional, differentiable unrolled steps
  (``torch.func.grad`` of a ``functional_call``; vmap-able over restarts), as breaching's
  multi-step objective and Inverting Gradients' FedAvg experiment (Geiping et al. 2020, sec. 6)
  do. ``benchmarks/fedavg_exactness.py`` checks that both agree on real images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gradleak.errors import GradleakError

OPTIMIZERS = ("sgd", "momentum", "adam")
#: Facts of local training an observation flags known or hidden, like labels and batch size.
LOCAL_FACTS = ("lr", "steps", "local_batch_size", "optimizer", "order")


@dataclass(frozen=True)
class LocalTraining:
    """How the client trains locally before it sends its weights.

    Attributes:
        lr: learning rate.
        batch_size: local batch size b (the last batch of an epoch may be smaller).
        steps: K local optimizer steps; the data is walked epoch after epoch.
        epochs: E epochs of ceil(N / b) steps each (give ``steps`` or ``epochs``).
        optimizer: ``"sgd"``, ``"momentum"`` (SGD with heavy-ball momentum) or ``"adam"``.
        momentum: momentum coefficient of ``"momentum"``.
        betas, eps: Adam's coefficients.
        weight_decay: L2 weight decay added to the gradient (torch's convention).
        shuffle: reshuffle the images every epoch (seeded by ``order_seed``); else in order.
        order_seed: seed of the shuffles.
    """

    lr: float
    batch_size: int
    steps: int | None = None
    epochs: int | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    shuffle: bool = False
    order_seed: int = 0

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise GradleakError("local training needs exactly one of steps or epochs")
        if (self.steps is not None and self.steps < 1) or (
            self.epochs is not None and self.epochs < 1
        ):
            raise GradleakError("local steps and epochs must be at least 1")
        if self.batch_size < 1:
            raise GradleakError(f"local batch size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GradleakError(f"local learning rate must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise GradleakError(
                f"unknown local optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}"
            )

    def num_steps(self, n_images: int) -> int:
        """K: the local optimizer steps over ``n_images`` images."""
        if self.steps is not None:
            return self.steps
        return self.epochs * math.ceil(n_images / self.batch_size)

    def order(self, n_images: int) -> list[list[int]]:
        """The image indices of every local step, epoch after epoch (shuffled if asked)."""
        generator = torch.Generator().manual_seed(self.order_seed)
        per_epoch = math.ceil(n_images / self.batch_size)
        steps: list[list[int]] = []
        while len(steps) < self.num_steps(n_images):
            perm = (
                torch.randperm(n_images, generator=generator).tolist()
                if self.shuffle
                else list(range(n_images))
            )
            for k in range(per_epoch):
                steps.append(perm[k * self.batch_size : (k + 1) * self.batch_size])
        return steps[: self.num_steps(n_images)]

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The client's real torch optimizer over ``params`` (SGD, heavy-ball SGD or Adam)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(
                params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay
            )
        momentum = self.momentum if self.optimizer == "momentum" else 0.0
        return torch.optim.SGD(
            params, lr=self.lr, momentum=momentum, weight_decay=self.weight_decay
        )

    def as_dict(self) -> dict:
        facts = dataclasses.asdict(self)
        facts["betas"] = list(self.betas)
        return facts

    @classmethod
    def from_dict(cls, facts: dict) -> LocalTraining:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in facts.items() if k in known}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise GradleakError(f"malformed local-training record ({err})") from None


# ---------------------------------------------------------------------- the client
def train_locally(
    net: nn.Module,
    loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    training: LocalTraining,
    order: list[list[int]],
) -> list[float]:
    """Train ``net`` in place with a real torch optimizer, one step per entry of ``order``.

    ``loss_of(images, labels)`` is the client's loss (it calls the model). Returns the losses.
    """
    optimizer = training.make_optimizer(list(net.parameters()))
    losses = []
    for indices in order:
        index = torch.tensor(indices, device=images.device)
        optimizer.zero_grad()
        loss = loss_of(images.index_select(0, index), labels.index_select(0, index))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# ---------------------------------------------------------------------- the attacker's replay
Params = dict[str, torch.Tensor]


def unrolled_update(
    loss_of: Callable[[Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, object]],
    params: Params,
    images: torch.Tensor,
    labels: torch.Tensor,
    training: LocalTraining,
    order: list[list[int]],
    lr: torch.Tensor | float | None = None,
    gradient_of: Callable[[Params, torch.Tensor, torch.Tensor], tuple[Params, object]]
    | None = None,
) -> tuple[Params, list]:
    """The pseudo-gradient ``params - params_K`` after replaying the local steps functionally.

    ``loss_of(params, images, labels) -> (loss, aux)`` evaluates the client's loss at ``params``;
    every step differentiates it with ``torch.func.grad`` (so the whole replay stays
    differentiable in ``images``, ``labels`` and ``lr``, and vmap-able), or with
    ``gradient_of(params, images, labels) -> (gradients, aux)`` when given (e.g. double-backward
    autograd, faster on deep models outside vmap). ``lr`` overrides the recorded learning rate
    (e.g. a learnable estimate when the threat model hides it). Returns the pseudo-gradient and
    the ``aux`` of every step.
    """
    from torch.func import grad

    gradient_of = gradient_of or grad(loss_of, has_aux=True)
    step_size = training.lr if lr is None else lr
    current = dict(params)
    state: dict[str, list[torch.Tensor]] = {}
    auxiliaries = []
    for t, indices in enumerate(order):
        index = torch.tensor(indices, device=images.device)
        gradients, aux = gradient_of(
            current, images.index_select(0, index), labels.index_select(0, index)
        )
        auxiliaries.append(aux)
        current = {
            name: value - step_size * _direction(training, state, name, gradients[name], value, t)
            for name, value in current.items()
        }
    return {name: params[name] - current[name] for name in params}, auxiliaries


def _direction(
    training: LocalTraining,
    state: dict[str, list[torch.Tensor]],
    name: str,
    gradient: torch.Tensor,
    value: torch.Tensor,
    t: int,
) -> torch.Tensor:
    """The optimizer's step direction (times lr gives the step), as torch.optim computes it."""
    if training.weight_decay:
        gradient = gradient + training.weight_decay * value
    if training.optimizer == "sgd":
        return gradient
    if training.optimizer == "momentum":
        buffer = gradient if t == 0 else training.momentum * state[name][0] + gradient
        state[name] = [buffer]
        return buffer
    beta1, beta2 = training.betas
    if t == 0:
        first, second = (1 - beta1) * gradient, (1 - beta2) * gradient * gradient
    else:
        first = beta1 * state[name][0] + (1 - beta1) * gradient
        second = beta2 * state[name][1] + (1 - beta2) * gradient * gradient
    state[name] = [first, second]
    correction1 = 1 - beta1 ** (t + 1)
    correction2 = math.sqrt(1 - beta2 ** (t + 1))
    # clamp: sqrt's derivative at an exactly-zero second moment (dead units) would be inf
    denominator = second.clamp_min(1e-30).sqrt() / correction2 + training.eps
    return first / (correction1 * denominator)
