"""Gradient distances between simulated and observed gradients, one value per restart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gradleak.errors import GradleakError

DISTANCES = ("l2", "cosine")


class GradientDistance:
    """Distance between candidate gradients (R, ...) and the observed gradient, per restart.

    ``l2`` is DLG's (Zhu et al. 2019, eq. 4): sum over layers of w_l * ||g_l - g*_l||^2.
    ``cosine`` is Inverting Gradients' (Geiping et al. 2020, eq. 4) over the whole gradient
    vector: 1 - <g, g*> / (||g|| ||g*||), with layer l's coordinates weighted by w_l.

    Args:
        kind: ``"l2"`` or ``"cosine"``.
        target: the observed gradients, in parameter order.
        layer_weights: optional weight per parameter tensor (default 1 for all).
        precise: evaluate the cosine distance as ``||g/|g| - t/|t|||^2 / 2``, free of the float32
            cancellation of ``1 - cos`` near 0 that stalls L-BFGS line searches, at the cost of
            full-size temporaries; otherwise as ``1 - <g, t> / (|g| |t|)`` with reductions only
            (about 3x less memory traffic, which is what bounds large fully connected layers).
    """

    def __init__(
        self,
        kind: str,
        target: Sequence[torch.Tensor],
        layer_weights: Sequence[float] | Mapping[int, float] | None = None,
        *,
        precise: bool = False,
    ):
        if kind not in DISTANCES:
            raise GradleakError(f"unknown gradient distance {kind!r}; choose one of {DISTANCES}")
        self.kind = kind
        self.precise = precise
        self.target = [t.detach() for t in target]
        if layer_weights is None:
            self.weights = [1.0] * len(self.target)
        else:
            self.weights = [float(w) for w in layer_weights]
            if len(self.weights) != len(self.target):
                raise GradleakError(
                    f"{len(self.weights)} layer weights for {len(self.target)} gradient tensors"
                )
        self.target_norm = torch.sqrt(
            sum(w * t.pow(2).sum() for w, t in zip(self.weights, self.target, strict=True))
        )
        self.flat_target = [t.flatten() for t in self.target]

    def _norm(self, candidate: Sequence[torch.Tensor]) -> torch.Tensor:
        """The weighted norm of each restart's whole gradient vector, (R,)."""
        return torch.sqrt(
            sum(
                w * torch.linalg.vector_norm(g.flatten(1), dim=1).square()
                for w, g in zip(self.weights, candidate, strict=True)
            )
        ).clamp_min(1e-12)

    def __call__(self, candidate: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.kind == "l2":
            return sum(
                w * (g - t).pow(2).flatten(1).sum(1)
                for w, g, t in zip(self.weights, candidate, self.target, strict=True)
            )
        if not self.precise:
            return _CosineDistance.apply(self, *candidate)
        norm = self._norm(candidate)
        return 0.5 * sum(
            w
            * (g / norm.view(-1, *([1] * (g.ndim - 1))) - t / self.target_norm)
            .pow(2)
            .flatten(1)
            .sum(1)
            for w, g, t in zip(self.weights, candidate, self.target, strict=True)
        )


class _CosineDistance(torch.autograd.Function):
    """``1 - <g, t> / (|g| |t|)`` per restart with a closed-form backward.

    The derivative is ``w_l (a_r g_l + b_r t_l)`` with ``a_r = <g, t> / (|g|^3 |t|)`` and
    ``b_r = -1 / (|g| |t|)``: two passes over each gradient tensor, where autograd's backward of
    the norm and the dot product makes four (the passes over millions of gradient entries are
    what a deep model's step spends beyond its convolutions).
    """

    @staticmethod
    def forward(ctx, distance: GradientDistance, *candidate: torch.Tensor) -> torch.Tensor:
        weights, targets = distance.weights, distance.flat_target
        dot = sum(
            w * (g.flatten(1) @ t) for w, g, t in zip(weights, candidate, targets, strict=True)
        )
        norm = distance._norm(candidate)
        ctx.distance = distance
        ctx.save_for_backward(dot, norm, *candidate)
        return 1 - dot / (norm * distance.target_norm)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        dot, norm, *candidate = ctx.saved_tensors
        distance = ctx.distance
        scale = grad_output / (norm * distance.target_norm)
        along_g, along_t = scale * dot / norm.square(), -scale
        grads = []
        for w, g, t in zip(distance.weights, candidate, distance.target, strict=True):
            shape = (-1, *([1] * (g.ndim - 1)))
            grads.append(
                torch.addcmul(
                    g * (w * along_g).view(shape), t.unsqueeze(0), (w * along_t).view(shape)
                )
            )
        return (None, *grads)


def matching_distance(
    observation, model, images: torch.Tensor, labels: torch.Tensor, kind: str = "cosine"
) -> float:
    """How well ``images`` with ``labels`` (B, ...) explain the observed gradient: the ``kind``
    distance between their client gradient and the observation's. Comparable across attacks
    (each reports its own objective), computed from what the attacker sees only."""
    from gradleak.gradient.simulation import ClientSimulator

    simulator = ClientSimulator(model, observation=observation)
    distance = GradientDistance(
        kind, [observation.gradients[n] for n in simulator.names], precise=True
    )
    with torch.no_grad():
        gradients = simulator.gradients(images[None].detach(), labels[None].long())
    return float(distance(gradients)[0])
