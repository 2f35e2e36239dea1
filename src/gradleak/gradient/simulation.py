"""The attacker's replay of the client step: gradients of candidate batches, one per restart.

Given candidate images of shape (R, B, C, H, W) (R restarts of a batch of B), the simulator
returns the R per-parameter gradients the client would have sent for each candidate, differentiable
with respect to the candidates. Several restarts are vectorized with ``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call``; a single restart (and models that vmap cannot handle)
takes plain double-backward autograd, which costs less per call on deep models. Callers
differentiate with ``backward(inputs=...)`` so that no gradient flows into the model's weights.
On request the same forward pass also reports the batch statistics entering every BatchNorm
layer (GradInversion's BN prior), at no extra forward cost.

Given the observation, the simulator replays what was observed: for a FedAvg update, each
restart's local training is unrolled functionally (:func:`gradleak.threat.local_training.
unrolled_update`) and the pseudo-gradient is returned in place of the gradient; for a secure
aggregate of M clients, the candidates' B images are split into the M clients' shares and the
clients' results averaged (one batch of B when that is the same thing: gradients without
train-mode BatchNorm). Local-training facts the threat model hides are replaced by the
attacker's assumptions (:func:`assumed_local_training`), and a hidden learning rate may be
passed per restart as a variable.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from gradleak.errors import GradleakError
from gradleak.gradient.structure import batchnorm_layers
from gradleak.models import ImageClassifier
from gradleak.threat.local_training import LocalTraining, unrolled_update

BatchStatistics = list[tuple[torch.Tensor, torch.Tensor]]
"""Per BatchNorm layer, the (mean, variance) of its input channels, each shaped (R, C)."""


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (B,) or label logits (B, K) (DLG's joint labels)."""
    if labels.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(logits, labels)
    return -(labels.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def assumed_local_training(
    observation, *, lr_guess: float = 0.01
) -> tuple[LocalTraining | None, list[list[int]] | None, dict]:
    """The local training the attacker replays for an update observation (attacker view), and
    the assumptions it had to make for hidden facts.

    Hidden facts are filled in as: optimizer plain SGD; order unshuffled (epoch after epoch in
    index order); steps one epoch (ceil(n / b)); local batch size ceil(n / K) (all n images when
    the steps are hidden too); lr ``lr_guess`` (attacks may learn it). Returns
    ``(None, None, {})`` for gradients.
    """
    if observation.kind != "update":
        return None, None, {}
    local = dict(observation.local or {})
    n = observation.images_per_client
    assumed: dict = {}
    if local.get("optimizer") is None:
        local.update(optimizer="sgd", momentum=0.9, betas=[0.9, 0.999], eps=1e-8, weight_decay=0)
        assumed["optimizer"] = "sgd"
    if local.get("batch_size") is None:
        steps = local.get("steps")
        local["batch_size"] = math.ceil(n / steps) if steps else n
        assumed["local_batch_size"] = local["batch_size"]
    if local.get("steps") is None and local.get("epochs") is None:
        local["epochs"] = 1
        assumed["steps"] = "one epoch"
    if local.get("lr") is None:
        local["lr"] = lr_guess
        assumed["lr"] = lr_guess
    order = local.get("order")
    if order is None:
        local.update(shuffle=False, order_seed=0)
        assumed["order"] = "unshuffled"
    training = LocalTraining.from_dict(local)
    if order is None:
        order = training.order(n)
    return training, order, assumed


def _stack(parts) -> torch.Tensor:
    """Stack per-restart tensors; a single one becomes a view, not a copy."""
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


class ClientSimulator:
    """Per-restart client gradients (or FedAvg pseudo-gradients) for candidate batches.

    Args:
        model: the server's copy of the model with the observed weights, in the observed mode.
        vectorize: ``vmap`` over restarts (falls back to a loop where the model does not allow it).
        batch_statistics: also return the input statistics of every BatchNorm layer.
        observation: the attacker's view of what was observed; None: one client's gradient.
        lr_guess: the learning rate assumed when an update's learning rate is hidden.
        order: replaces the local steps' image indices (into each client's share of the
            candidates), e.g. separate variables per epoch (Dimitrov et al. 2022).
    """

    def __init__(
        self,
        model: ImageClassifier,
        *,
        vectorize: bool = True,
        batch_statistics: bool = False,
        observation=None,
        lr_guess: float = 0.01,
        order: list[list[int]] | None = None,
    ):
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        layers = batchnorm_layers(self.model)
        if batch_statistics and not layers:
            raise GradleakError("the BatchNorm prior needs a model with BatchNorm layers")
        if batch_statistics and any(m.running_mean is None for m in layers):
            raise GradleakError(
                "the BatchNorm prior needs running statistics; this model's BatchNorm layers "
                "do not track them"
            )
        self.running_statistics = [
            (m.running_mean.clone(), m.running_var.clone())
            for m in layers
            if m.running_mean is not None
        ]
        batch_dependent = self.model.training and bool(layers)
        if self.model.training:
            # Train-mode BatchNorm normalizes with batch statistics; under vmap the running-stat
            # update is an illegal in-place write, and the attacker does not need it.
            replace_all_batch_norm_modules_(self.model)
        self._captured: list[tuple[torch.Tensor, torch.Tensor]] = []
        if batch_statistics:
            for layer in layers:
                layer.register_forward_hook(self._capture)
        self.names = [name for name, _ in self.model.net.named_parameters()]
        self.params = {f"net.{n}": p.detach() for n, p in self.model.net.named_parameters()}
        self.vectorize = vectorize
        self.clients = 1 if observation is None else observation.clients
        self.training, self.order, self.assumed = (
            assumed_local_training(observation, lr_guess=lr_guess)
            if observation is not None
            else (None, None, {})
        )
        if order is not None and self.training is not None:
            self.order = order
        # Clients' gradients without batch statistics average to the whole batch's gradient.
        self.merge_clients = self.training is None and not batch_dependent
        self.treatment = (
            "one client"
            if self.clients == 1
            else "one batch of all clients' images (exact for averaged gradients)"
            if self.merge_clients
            else f"{self.clients} clients simulated separately, then averaged"
        )

    @property
    def learns_lr(self) -> bool:
        """Whether the observation hides an update's learning rate (a caller may learn it)."""
        return "lr" in self.assumed

    def _capture(self, _module, inputs, _output) -> None:
        features = inputs[0]
        dims = [0, *range(2, features.dim())]
        self._captured.append((features.mean(dims), features.var(dims, unbiased=False)))

    def _traced_loss(self, logits_of, images: torch.Tensor, labels: torch.Tensor):
        """The client's loss and the BN input statistics its forward pass traced."""
        self._captured = []
        loss = soft_cross_entropy(logits_of(images), labels)
        statistics = tuple(self._captured)
        self._captured = []
        return loss, statistics

    def _loss(self, params: dict, images: torch.Tensor, labels: torch.Tensor):
        return self._traced_loss(
            lambda x: functional_call(self.model, params, (x,)), images, labels
        )

    def _client(self, images, labels, lr, autograd: bool):
        """One client's gradient or pseudo-gradient (dict by parameter) and traced statistics."""
        gradient_of = self._autograd_gradient if autograd else grad(self._loss, has_aux=True)
        if self.training is None:
            grads, statistics = gradient_of(self.params, images, labels)
            return grads, [statistics]
        return unrolled_update(
            self._loss, self.params, images, labels, self.training, self.order, lr, gradient_of
        )

    def _autograd_gradient(self, params: dict, images: torch.Tensor, labels: torch.Tensor):
        """The loss gradient at ``params`` by double-backward autograd (outside vmap), and the
        traced statistics; differentiable in the inputs unless gradients are disabled."""
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            names = list(params)
            leaves = [
                p if p.requires_grad else p.detach().requires_grad_(True) for p in params.values()
            ]
            loss, statistics = self._loss(dict(zip(names, leaves, strict=True)), images, labels)
            grads = torch.autograd.grad(loss, leaves, create_graph=differentiable)
        if not differentiable:
            grads = [g.detach() for g in grads]
            statistics = tuple((m.detach(), v.detach()) for m, v in statistics)
        return dict(zip(names, grads, strict=True)), statistics

    def _single(self, images: torch.Tensor, labels: torch.Tensor, lr=None, autograd=False):
        """One restart: the averaged result of every client, and the mean BN statistics
        (``autograd``: double-backward autograd outside vmap instead of ``torch.func.grad``)."""
        groups = 1 if self.merge_clients else self.clients
        share = len(images) // groups
        total, traced = None, []
        for c in range(groups):
            part = slice(c * share, (c + 1) * share)
            result, statistics = self._client(images[part], labels[part], lr, autograd)
            traced.extend(statistics)
            total = result if total is None else {k: total[k] + result[k] for k in total}
        if groups == 1:  # no division: it would copy every gradient (and its backward)
            return tuple(total[f"net.{n}"] for n in self.names), _mean_statistics(traced)
        averaged = tuple(total[f"net.{n}"] / groups for n in self.names)
        return averaged, _mean_statistics(traced)

    def simulate(
        self, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor | None = None
    ) -> tuple[tuple[torch.Tensor, ...], BatchStatistics]:
        """Gradients and BatchNorm input statistics for candidates ``images`` (R, B, C, H, W).

        Returns one tensor per parameter, each (R, *param.shape), in parameter order (for an
        update observation: the pseudo-gradients), and (empty unless ``batch_statistics``) per
        BN layer the (mean, variance), each (R, C). ``lr`` (R,): per-restart learning rates
        replacing a hidden one.
        """
        if self.vectorize and len(images) > 1:
            try:
                if lr is None:
                    grads, statistics = vmap(self._single)(images, labels)
                else:
                    grads, statistics = vmap(self._single)(images, labels, lr)
                return grads, list(statistics)
            except RuntimeError as err:
                warnings.warn(
                    f"vmap over restarts failed ({err}); falling back to a loop", stacklevel=2
                )
                self.vectorize = False
        rates = [None] * len(images) if lr is None else list(lr)
        per_restart = [
            self._single(x, y, rate, autograd=True)
            for x, y, rate in zip(images, labels, rates, strict=True)
        ]
        grads = tuple(_stack(parts) for parts in zip(*(g for g, _ in per_restart), strict=True))
        statistics = [
            (_stack([m for m, _ in layer]), _stack([v for _, v in layer]))
            for layer in zip(*(s for _, s in per_restart), strict=True)
        ]
        return grads, statistics

    def gradients(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradients for candidates ``images`` (R, B, C, H, W) and ``labels`` (R, B[, K]).

        Returns one tensor per parameter, each of shape (R, *param.shape), in parameter order.
        """
        return self.simulate(images, labels)[0]


def _mean_statistics(traced: list) -> tuple:
    """Per BN layer, the mean over forward passes of the traced (mean, variance)."""
    if not traced or not traced[0]:
        return ()
    return tuple(
        (
            sum(m for m, _ in layer) / len(layer),
            sum(v for _, v in layer) / len(layer),
        )
        for layer in zip(*traced, strict=True)
    )
