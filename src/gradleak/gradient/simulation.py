"""The attacker's replay of the client step: gradients of candidate batches, one per restart.

Given candidate images of shape (R, B, C, H, W) (R restarts of a batch of B), the simulator
returns the R per-parameter gradients the client would have sent for each candidate, differentiable
with respect to the candidates. Several restarts are vectorized with ``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call``; a single restart (and models that vmap cannot handle)
takes plain double-backward autograd, which costs less per call on deep models. Callers
differentiate with ``backward(inputs=...)`` so that no gradient flows into the model's weights.
On request the same forward pass also reports the batch statistics entering every BatchNorm
layer (GradInversion's BN prior), at no extra forward cost.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from gradleak.errors import GradleakError
from gradleak.gradient.structure import batchnorm_layers
from gradleak.models import ImageClassifier

BatchStatistics = list[tuple[torch.Tensor, torch.Tensor]]
"""Per BatchNorm layer, the (mean, variance) of its input channels, each shaped (R, C)."""


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (B,) or label logits (B, K) (DLG's joint labels)."""
    if labels.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(logits, labels)
    return -(labels.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def _stack(parts) -> torch.Tensor:
    """Stack per-restart tensors; a single one becomes a view, not a copy."""
    return parts[0].unsqueeze(0) if len(parts) == 1 else torch.stack(parts)


class ClientSimulator:
    """Per-restart client gradients for candidate batches under the observed weights.

    Args:
        model: the server's copy of the model with the observed weights, in the observed mode.
        vectorize: ``vmap`` over restarts (falls back to a loop where the model does not allow it).
        batch_statistics: also return the input statistics of every BatchNorm layer.
    """

    def __init__(
        self, model: ImageClassifier, *, vectorize: bool = True, batch_statistics: bool = False
    ):
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.model.net.parameters():
            p.requires_grad_(True)  # for the autograd path; the vmap path uses detached copies
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
        self.weights = [p for _, p in self.model.net.named_parameters()]
        self.vectorize = vectorize

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

    def _single(self, images: torch.Tensor, labels: torch.Tensor):
        grads, statistics = grad(self._loss, has_aux=True)(self.params, images, labels)
        return tuple(grads[f"net.{n}"] for n in self.names), statistics

    def _single_autograd(self, images: torch.Tensor, labels: torch.Tensor):
        differentiable = torch.is_grad_enabled()  # under no_grad: plain gradients, no graph
        with torch.enable_grad():
            loss, statistics = self._traced_loss(self.model, images, labels)
            grads = torch.autograd.grad(loss, self.weights, create_graph=differentiable)
        if not differentiable:
            statistics = tuple((m.detach(), v.detach()) for m, v in statistics)
        return grads, statistics

    def simulate(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], BatchStatistics]:
        """Gradients and BatchNorm input statistics for candidates ``images`` (R, B, C, H, W).

        Returns one gradient tensor per parameter, each (R, *param.shape), in parameter order,
        and (empty unless ``batch_statistics``) per BN layer the (mean, variance), each (R, C).
        """
        if self.vectorize and len(images) > 1:
            try:
                grads, statistics = vmap(self._single)(images, labels)
                return grads, list(statistics)
            except RuntimeError as err:
                warnings.warn(
                    f"vmap over restarts failed ({err}); falling back to a loop", stacklevel=2
                )
                self.vectorize = False
        per_restart = [self._single_autograd(x, y) for x, y in zip(images, labels, strict=True)]
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
