"""Batch-size estimation from an observed gradient, without the observation's hidden facts.

**Rank.** A fully connected layer ``z = W a + b`` receives ``[dW | db] = (1/B) D^T [A | 1]`` for
the batch's inputs ``A`` (``B x d``) and backpropagated errors ``D`` (``B x m``), so its rank is
``min(B, m, d + 1)`` for inputs in general position (see ``shared/notes/fc-gradient-subspace.md``).
The first layer of an MLP therefore gives ``B`` exactly up to its width (``mlp4``: 256,
``fc_relu``: 300). For the output layer, cross-entropy makes each row of ``D`` sum to zero, so its
rank is at most ``K - 1``, and classes whose probabilities are all ~0 hide more: for a network
whose only fully connected layer is the output (``lenet``) the rank is the estimate up to
``B = K - 2`` (usually right up to 7 for CIFAR-10, measured) but never claimed exact, and beyond
that only a lower bound. Only a hidden layer's rank below its capacity is reported ``exact``.
Numerical rank counts the singular values above
``threshold`` times the float rounding noise of the gradient,
``eps * ||G||_F * (sqrt(m) + sqrt(n)) / sqrt(m n)`` (the spectral norm of a random ``m x n``
matrix with entries of relative size ``eps``); measured, exact singular values sit 2 to 8 decades
above it and rounding noise at 0.3 to 1.5 times it.

**Counts.** With the bias-gradient counts of :func:`gradleak.gradient.labels.bias`, ``B db =
Q^T n - n``: only the right ``B`` makes the solution ``n`` (nearly) integral. The candidate with
the most integral counts above the rank's lower bound is returned; it is a best guess, off when
the counts are noisy (trained or large-logit networks) or all share a common factor.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import GradleakError
from gradleak.gradient.labels import (
    class_probabilities,
    output_gradients,
    require_bias,
    solve_counts,
)
from gradleak.gradient.structure import output_layer
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

ESTIMATORS = ("auto", "rank", "counts")


def estimate_batch_size(
    view: Observation,
    model: ImageClassifier | None = None,
    *,
    method: str = "auto",
    max_batch_size: int = 512,
    threshold: float = 10.0,
    return_details: bool = False,
) -> int | tuple[int, dict]:
    """Estimate the client's batch size from the gradient alone.

    Args:
        view: the attacker's view; ``view.batch_size`` is never read.
        model: the server's model; ``view.build_model()`` when omitted.
        method: ``"rank"`` (the largest numerical rank of a fully connected layer's gradient),
            ``"counts"`` (the batch size whose label counts are most integral, at least the rank
            bound) or ``"auto"`` (rank when it is below a layer's capacity, else counts).
        max_batch_size: largest candidate for ``"counts"``.
        threshold: singular values count toward the rank above ``threshold`` times the float
            rounding noise.
        return_details: also return a dict: ``method``, ``exact`` (a hidden layer's rank below
            its capacity), ``lower_bound`` (the largest rank), per-layer ``layers`` evidence and,
            for counts, ``integrality`` (the best candidates' scores).

    Returns:
        The estimate, or ``(estimate, details)``.

    Raises:
        GradleakError: unknown method, no fully connected layer with a gradient, or (counts) no
            output-layer bias.
    """
    if method not in ESTIMATORS:
        raise GradleakError(f"unknown batch-size estimator {method!r}; choose one of {ESTIMATORS}")
    if not isinstance(max_batch_size, int) or max_batch_size < 1:
        raise GradleakError(f"max_batch_size must be a positive integer, got {max_batch_size!r}")
    model = model if model is not None else view.build_model()
    layers = gradient_ranks(view, model, threshold=threshold)
    if not layers:
        raise GradleakError(
            f"model '{model.config.get('name')}' has no fully connected layer with an observed "
            f"gradient; the batch size cannot be read off a rank"
        )
    bound = max(layer["rank"] for layer in layers)
    below = [layer for layer in layers if layer["rank"] == bound < layer["capacity"]]
    exact = any(not layer["output"] for layer in below)
    details = {"method": "rank", "exact": exact, "lower_bound": bound, "layers": layers}
    estimate = bound
    if method == "counts" or (method == "auto" and not below):
        if bound > max_batch_size:
            raise GradleakError(
                f"the gradient's rank shows at least {bound} images, above max_batch_size="
                f"{max_batch_size}"
            )
        if method == "auto" and _output_bias_missing(view, model):
            return (bound, details) if return_details else bound
        estimate, scores = _integral_counts(view, model, bound, max_batch_size)
        details.update(method="counts", exact=False, integrality=scores)
    return (estimate, details) if return_details else estimate


def gradient_ranks(
    view: Observation, model: ImageClassifier, threshold: float = 10.0
) -> list[dict]:
    """Numerical rank of ``[dW | db]`` for every ``nn.Linear`` of ``model.net`` with a gradient.

    Each entry: ``name``, ``output`` (whether it is the output layer), ``rank``, ``capacity``
    (the largest rank the layer can show: its smaller side, or for the output layer the number
    of active class rows minus one), ``noise`` (the rounding-noise unit) and ``margin``
    (``sigma_rank / noise`` and ``sigma_rank+1 / noise``).
    """
    output_name = _output_name(model)
    entries = []
    for name, module in model.net.named_modules():
        if not isinstance(module, nn.Linear) or f"{name}.weight" not in view.gradients:
            continue
        grad = view.gradients[f"{name}.weight"]
        parts = [grad.detach().double()]
        if module.bias is not None and f"{name}.bias" in view.gradients:
            parts.append(view.gradients[f"{name}.bias"].detach().double()[:, None])
        stacked = torch.cat(parts, dim=1)
        if not torch.isfinite(stacked).all():
            raise GradleakError(f"gradient of layer '{name}' contains NaN or inf values")
        rows, cols = stacked.shape
        eps = torch.finfo(grad.dtype if grad.is_floating_point() else torch.float32).eps
        norm = float(stacked.norm())
        noise = eps * norm * (rows**0.5 + cols**0.5) / (rows * cols) ** 0.5
        if norm == 0:
            entries.append(
                {
                    "name": name,
                    "output": name == output_name,
                    "rank": 0,
                    "capacity": min(rows, cols),
                    "noise": 0.0,
                    "margin": [],
                }
            )
            continue
        sigma = torch.linalg.svdvals(stacked)
        rank = int((sigma > threshold * noise).sum())
        capacity = min(rows, cols)
        if name == output_name:
            active = int((stacked.norm(dim=1) > threshold * noise).sum())
            capacity = min(capacity, max(active - 1, 1))
        margin = [float(sigma[i] / noise) for i in (rank - 1, rank) if 0 <= i < len(sigma)]
        entries.append(
            {
                "name": name,
                "output": name == output_name,
                "rank": rank,
                "capacity": capacity,
                "noise": noise,
                "margin": margin,
            }
        )
    return entries


def _output_name(model: ImageClassifier) -> str | None:
    try:
        return output_layer(model)[0]
    except GradleakError:
        return None


def _output_bias_missing(view: Observation, model: ImageClassifier) -> bool:
    try:
        return output_gradients(view, model).grad_bias is None
    except GradleakError:
        return True


def _integral_counts(
    view: Observation, model: ImageClassifier, lowest: int, highest: int
) -> tuple[int, dict]:
    """The candidate batch size whose bias-gradient counts are nearest to integers."""
    out = require_bias(output_gradients(view, model), "counts")
    fractions = solve_counts(class_probabilities(out, max(lowest, 1)), out.grad_bias, 1)
    sizes = torch.arange(max(lowest, 1), highest + 1, dtype=torch.float64)
    real = sizes[:, None] * fractions
    values = ((real - real.round()).square() + real.clamp(max=0).square()).mean(1)
    scores = {int(s): float(v) for s, v in zip(sizes, values, strict=True)}
    best = int(sizes[int(values.argmin())])
    ranked = sorted(scores, key=scores.get)[:5]
    return best, {"best": {s: scores[s] for s in ranked}}


__all__ = ["ESTIMATORS", "estimate_batch_size", "gradient_ranks"]
