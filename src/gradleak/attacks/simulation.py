"""The attacker's replay of the client step: gradients of candidate batches, one per restart.

Given candidate images of shape (R, B, C, H, W) (R restarts of a batch of B), the simulator
returns the R per-parameter gradients the client would have sent for each candidate, differentiable
with respect to the candidates. Restarts are vectorized with ``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call``; models that vmap cannot handle fall back to an exact
loop over restarts.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad, replace_all_batch_norm_modules_, vmap

from gradleak.models import ImageClassifier


def soft_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels (B,) or label logits (B, K) (DLG's joint labels)."""
    if labels.dtype in (torch.int64, torch.int32):
        return nn.functional.cross_entropy(logits, labels)
    return -(labels.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


class ClientSimulator:
    """Per-restart client gradients for candidate batches under the observed weights.

    Args:
        model: the server's copy of the model with the observed weights, in the observed mode.
        vectorize: ``vmap`` over restarts (falls back to a loop where the model does not allow it).
    """

    def __init__(self, model: ImageClassifier, *, vectorize: bool = True):
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.model.training:
            # Train-mode BatchNorm normalizes with batch statistics; under vmap the running-stat
            # update is an illegal in-place write, and the attacker does not need it.
            replace_all_batch_norm_modules_(self.model)
        self.names = [name for name, _ in self.model.net.named_parameters()]
        self.params = {f"net.{n}": p.detach() for n, p in self.model.net.named_parameters()}
        self.vectorize = vectorize

    def _loss(self, params: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(functional_call(self.model, params, (images,)), labels)

    def _single(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads = grad(self._loss)(self.params, images, labels)
        return tuple(grads[f"net.{n}"] for n in self.names)

    def gradients(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Gradients for candidates ``images`` (R, B, C, H, W) and ``labels`` (R, B[, K]).

        Returns one tensor per parameter, each of shape (R, *param.shape), in parameter order.
        """
        if self.vectorize and len(images) > 1:
            try:
                return vmap(self._single)(images, labels)
            except RuntimeError as err:
                warnings.warn(
                    f"vmap over restarts failed ({err}); falling back to a loop", stacklevel=2
                )
                self.vectorize = False
        per_restart = [self._single(x, y) for x, y in zip(images, labels, strict=True)]
        return tuple(torch.stack(parts) for parts in zip(*per_restart, strict=True))
