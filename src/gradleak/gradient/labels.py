"""Batch label recovery from the output layer's gradient: which labels, and how many of each.

With cross-entropy averaged over a batch of ``B`` images, the output layer ``z = W a + b``
(``K`` classes, features ``a``) receives

    dL/db = (1/B) sum_i (p_i - y_i),        dL/dW = (1/B) sum_i (p_i - y_i) a_i^T,        (1)

with ``p_i = softmax(z_i)`` and ``y_i`` one-hot. Every method below reads these two tensors from
the attacker's view of an :class:`~gradleak.threat.Observation` (never the ground truth):

- :func:`idlg`: Zhao et al. 2020 (iDLG), batch size 1: the negative entry of (1).
- :func:`yin`: Yin et al., CVPR 2021 (GradInversion's batch label restoration): the ``B`` classes
  whose weight-gradient row has the most negative minimum; distinct labels only.
- :func:`llg`: Wainakh et al., PoPETs 2022 (LLG): row sums of dL/dW, one "impression" per
  instance subtracted greedily; counts are heuristic.
- :func:`ilrg`: Ma et al., ICLR 2023 (iLRG): per-class mean features ``e_c = dW_c / db_c``, their
  softmax ``q_c``, then the linear system ``B db = sum_j n_j q_j - n``, ``sum n = B`` (2).
- :func:`bias`: the same count equation, ``n = B (p_bar - db)`` with ``B p_bar = sum_j n_j q_j``,
  but ``q_j`` from features shrunk toward the batch's probability-weighted mean feature (read off
  the classes that are nearly absent), or from auxiliary images when the attacker has some. It
  recovers repeated labels and their counts; :func:`recover_labels` uses it for ``B > 1``.

Counts are rounded to non-negative integers summing to ``B`` (:func:`round_counts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gradleak.errors import GradleakError
from gradleak.gradient.structure import output_layer
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

METHODS = ("idlg", "yin", "llg", "ilrg", "bias")


@dataclass
class LabelRecovery:
    """Labels recovered from one observation.

    Attributes:
        labels: ``(B,)`` int64, sorted ascending (a multiset: the order carries no meaning).
            :func:`yin` returns at most ``num_classes`` labels.
        counts: label -> number of instances, for the labels present.
        method: the method that produced them (``"idlg"``, ``"yin"``, ``"llg"``, ``"ilrg"``,
            ``"bias"``).
        batch_size: the batch size used, given, known from the observation or estimated.
        details: method-specific evidence, e.g. ``"real_counts"`` (the unrounded solution) and
            ``"batch_size_source"``.
    """

    labels: torch.Tensor
    counts: dict[int, int]
    method: str
    batch_size: int
    details: dict = field(default_factory=dict)


@dataclass
class OutputGradients:
    """The output layer of a classifier and its observed gradients, in float64."""

    name: str
    weight: torch.Tensor  # (K, d)
    bias: torch.Tensor | None  # (K,)
    grad_weight: torch.Tensor  # (K, d)
    grad_bias: torch.Tensor | None  # (K,)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]


def output_gradients(view: Observation, model: ImageClassifier) -> OutputGradients:
    """The output layer's weights and observed gradients; GradleakError if they are missing.

    An update observation is read through :meth:`Observation.gradient_estimate` (its mean
    gradient over the local steps, approximately)."""
    view = view.gradient_estimate()
    name, layer = output_layer(model)
    grads = view.gradients
    key_w, key_b = f"{name}.weight", f"{name}.bias"
    if key_w not in grads:
        raise GradleakError(
            f"the observation has no gradient for the output layer '{key_w}'; was it made with "
            f"model '{model.config.get('name')}'?"
        )
    grad_w = grads[key_w]
    if tuple(grad_w.shape) != tuple(layer.weight.shape):
        raise GradleakError(
            f"gradient '{key_w}' has shape {list(grad_w.shape)}, the model's output layer has "
            f"{list(layer.weight.shape)}"
        )
    has_bias = layer.bias is not None and key_b in grads
    if has_bias and tuple(grads[key_b].shape) != tuple(layer.bias.shape):
        raise GradleakError(f"gradient '{key_b}' has shape {list(grads[key_b].shape)}")
    tensors = [grad_w] + ([grads[key_b]] if has_bias else [])
    if not all(torch.isfinite(t).all() for t in tensors):
        raise GradleakError(f"the output layer's gradient ('{name}') contains NaN or inf values")
    return OutputGradients(
        name=name,
        weight=layer.weight.detach().double(),
        bias=layer.bias.detach().double() if has_bias else None,
        grad_weight=grad_w.detach().double(),
        grad_bias=grads[key_b].detach().double() if has_bias else None,
    )


# ---------------------------------------------------------------------- methods
def idlg_label(
    observation: Observation, model: ImageClassifier, batch_size: int | None = None
) -> torch.Tensor:
    """iDLG's analytic label for a batch of one. Returns a (1,) int64 tensor.

    With cross-entropy, the gradient of the output layer's bias is softmax(z) - onehot(y),
    negative only at the true class; without a bias, the weight gradient's row (p_c - y_c) a is
    negative only at the true class for non-negative features a (sigmoid/ReLU), so the row with
    the smallest sum is the label. ``batch_size`` is the attacker's (known or guessed) batch
    size; default: the observation's known one, else 1.
    """
    size = batch_size or observation.known_batch_size or 1
    if size != 1:
        raise GradleakError(
            f"iDLG's analytic label needs batch size 1, the observation has {size}; "
            "use known labels, batch label recovery or joint optimization"
        )
    name, layer = output_layer(model)
    if layer.bias is not None:
        return observation.gradients[f"{name}.bias"].argmin().reshape(1)
    weight_grad = observation.gradients[f"{name}.weight"]
    return weight_grad.sum(1).argmin().reshape(1)


def idlg(view: Observation, model: ImageClassifier, batch_size: int | None = None) -> LabelRecovery:
    """iDLG (Zhao et al. 2020, "iDLG: Improved Deep Leakage from Gradients", sec. 3.2).

    For one image, dL/db = p - y is negative only at the true class
    (:func:`idlg_label`). Batch size 1 only.
    """
    size = resolve_batch_size(view, batch_size, "idlg")
    if size != 1:
        raise GradleakError(
            f"iDLG recovers the label of a batch of one; this batch has {size} images "
            f"(use method 'bias' or 'ilrg')"
        )
    label = idlg_label(dataclasses.replace(view, batch_size=1), model)
    return _result(label, "idlg", 1)


def yin(view: Observation, model: ImageClassifier, batch_size: int | None = None) -> LabelRecovery:
    """GradInversion's label restoration (Yin et al., CVPR 2021, "See through Gradients").

    With non-negative features (ReLU, sigmoid), row ``c`` of dL/dW has negative entries only if
    class ``c`` is in the batch; the ``B`` classes with the most negative row minimum are taken.
    Assumes distinct labels: returns ``min(B, num_classes)`` labels, each once.
    """
    size = resolve_batch_size(view, batch_size, "yin")
    out = output_gradients(view, model)
    row_min = out.grad_weight.min(dim=1).values
    chosen = torch.argsort(row_min)[: min(size, out.num_classes)]
    return _result(chosen, "yin", size, {"row_min": row_min.tolist()})


def llg(view: Observation, model: ImageClassifier, batch_size: int | None = None) -> LabelRecovery:
    """LLG (Wainakh et al., PoPETs 2022, "User-Level Label Leakage from Gradients in FL").

    ``g_c = sum_k dL/dW_ck``; classes with ``g_c < 0`` are taken once, then the class with the
    smallest ``g`` is added repeatedly, each pick adding the impression
    ``m = (sum_{g_c<0} g_c / B) (1 + 1/K)`` back to its ``g``.
    """
    size = resolve_batch_size(view, batch_size, "llg")
    out = output_gradients(view, model)
    g = out.grad_weight.sum(dim=1)
    negative = torch.nonzero(g < 0).flatten()
    negative = negative[torch.argsort(g[negative])][:size]
    impact = g[g < 0].sum() / size * (1 + 1 / out.num_classes)
    picked = negative.tolist()
    g = g.clone()
    g[negative] -= impact
    while len(picked) < size:
        c = int(torch.argmin(g))
        picked.append(c)
        g[c] -= impact
    return _result(torch.tensor(picked), "llg", size, {"impression": float(impact)})


def ilrg(view: Observation, model: ImageClassifier, batch_size: int | None = None) -> LabelRecovery:
    """iLRG (Ma et al., ICLR 2023, "Instance-wise Batch Label Restoration via Gradients in FL").

    By (1), ``e_c = dW_c / db_c`` is a weighted mean of the batch's features, and
    ``q_c = softmax(W e_c + b)`` stands for the probabilities of class ``c``'s instances. The
    counts solve (2), ``[1^T; Q^T - I] n = [B; B db]``, by least squares (the paper's
    Moore-Penrose pseudoinverse), rounded to integers summing to ``B``. Needs the output layer's
    bias. Exact when the network's outputs barely depend on the input (untrained nets); ``e_c``
    is unreliable when ``db_c`` is near 0.
    """
    size = resolve_batch_size(view, batch_size, "ilrg")
    out = require_bias(output_gradients(view, model), "ilrg")
    features = out.grad_weight / _safe(out.grad_bias)[:, None]
    probs = torch.softmax(features @ out.weight.T + out.bias, dim=1)
    real = solve_counts(probs, out.grad_bias, size)
    return _result(_labels_from(real, size), "ilrg", size, {"real_counts": real.tolist()})


def bias(
    view: Observation,
    model: ImageClassifier,
    batch_size: int | None = None,
    *,
    auxiliary_images: torch.Tensor | None = None,
    auxiliary_labels: torch.Tensor | None = None,
    shrink: float = 2.0,
) -> LabelRecovery:
    """Counts from the bias gradient: ``n = B (p_bar - dL/db)``, with ``B p_bar = sum_j n_j q_j``.

    ``q_j`` is the softmax of class ``j``'s features. Without auxiliary data, the iLRG estimate
    ``e_j = dW_j / db_j`` is shrunk toward the batch's probability-weighted mean feature,
    ``e_j' = e_bar + s_j (e_j - e_bar)`` with ``s_j = (B db_j)^2 / ((B db_j)^2 + shrink^2)``:
    ``e_j`` is exact for an absent class (``e_j = sum_i p_ij a_i / sum_i p_ij``) and noise where
    ``db_j`` is near 0, so ``e_bar`` averages the ``e_j`` weighted by ``max(B db_j, 0)^2``.
    With ``auxiliary_images`` (public images of the same domain), ``q_j`` is the model's mean
    softmax on the auxiliary images of class ``j`` (all of them when no labels are given). The
    system (2) of iLRG, ``[1^T; Q^T - I] n = [B; B db]``, is then solved and rounded.

    Args:
        view: the attacker's view of the observation.
        model: the server's model (:meth:`Observation.build_model`).
        batch_size: needed when the observation hides it.
        auxiliary_images: optional ``(N, C, H, W)`` images in [0, 1].
        auxiliary_labels: optional ``(N,)`` labels of ``auxiliary_images``.
        shrink: ``B db`` scale below which ``e_j`` is pulled toward ``e_bar``.
    """
    size = resolve_batch_size(view, batch_size, "bias")
    out = require_bias(output_gradients(view, model), "bias")
    probs = class_probabilities(out, size, shrink)
    details: dict = {}
    if auxiliary_labels is not None and auxiliary_images is None:
        raise GradleakError("auxiliary_labels were given without auxiliary_images")
    if auxiliary_images is not None:
        aux = auxiliary_probabilities(model, auxiliary_images, auxiliary_labels)
        if aux.ndim == 1:
            probs = aux.expand_as(probs)
        else:
            covered = ~torch.isnan(aux[:, 0])
            probs = torch.where(covered[:, None], aux, probs)
            details["auxiliary_classes"] = int(covered.sum())
        details["auxiliary_images"] = len(auxiliary_images)
    real = solve_counts(probs, out.grad_bias, size)
    details["real_counts"] = real.tolist()
    return _result(_labels_from(real, size), "bias", size, details)


_FUNCTIONS: dict[str, Callable[..., LabelRecovery]] = {
    "idlg": idlg,
    "yin": yin,
    "llg": llg,
    "ilrg": ilrg,
    "bias": bias,
}


def recover_labels(
    view: Observation,
    model: ImageClassifier | None = None,
    method: str = "auto",
    batch_size: int | None = None,
    **options,
) -> LabelRecovery:
    """Recover a batch's labels with ``method`` (``"auto"``: iDLG for one image, else ``bias``).

    The batch size is ``batch_size`` if given, else the observation's if known, else estimated by
    :func:`gradleak.gradient.estimate_batch_size` (``details["batch_size_exact"]`` says
    whether the estimate is exact or only the best guess above a rank bound).

    Args:
        view: the attacker's view (:meth:`Observation.attacker_view`); ground truth is not read.
        model: the server's model; ``view.build_model()`` when omitted.
        method: ``"auto"`` or one of :data:`METHODS`.
        batch_size: overrides the observation's (hidden or known) batch size.
        **options: passed to the method (``auxiliary_images``, ``auxiliary_labels`` for ``bias``).

    Examples::

        >>> view = observe(model, images, labels, knows_labels=False).attacker_view()
        >>> recover_labels(view, model).counts
    """
    if method != "auto" and method not in METHODS:
        raise GradleakError(f"unknown label recovery method {method!r}; choose one of {METHODS}")
    model = model if model is not None else view.build_model()
    details = {}
    if batch_size is None and view.known_batch_size is None:
        from gradleak.gradient.batch_size import estimate_batch_size  # (it uses this module)

        batch_size, evidence = estimate_batch_size(view, model, return_details=True)
        details = {
            "batch_size_source": f"estimated ({evidence['method']})",
            "batch_size_exact": evidence["exact"],
        }
    else:
        size = resolve_batch_size(view, batch_size, method)
        source = "given" if batch_size is not None else "observation"
        batch_size, details = size, {"batch_size_source": source, "batch_size_exact": True}
    if method == "auto":
        method = "idlg" if batch_size == 1 else "bias"
    result = _FUNCTIONS[method](view, model, batch_size, **options)
    result.details.update(details)
    return result


# ---------------------------------------------------------------------- shared parts
def resolve_batch_size(view: Observation, batch_size: int | None, method: str) -> int:
    """``batch_size`` if given, else the observation's known one; GradleakError if hidden."""
    known = view.known_batch_size
    if batch_size is None:
        if known is None:
            raise GradleakError(
                f"label recovery '{method}' needs the batch size, which this observation hides; "
                f"pass batch_size= or use recover_labels (it estimates the batch size)"
            )
        return int(known)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise GradleakError(f"batch_size must be a positive integer, got {batch_size!r}")
    if known is not None and batch_size != known:
        raise GradleakError(
            f"batch_size={batch_size} contradicts the observation's known batch size {known}"
        )
    return batch_size


def solve_counts(probs: torch.Tensor, grad_bias: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Real-valued counts ``n`` from ``B db = Q^T n - n`` and ``sum n = B`` (iLRG's system (2)).

    Args:
        probs: ``(K, K)``, row ``j`` the softmax of class ``j``'s instances.
        grad_bias: ``(K,)`` observed gradient of the output bias.
        batch_size: ``B``.
    """
    k = len(grad_bias)
    eye = torch.eye(k, dtype=torch.float64)
    system = torch.cat([torch.ones(1, k, dtype=torch.float64), probs.double().T - eye])
    target = torch.cat([torch.tensor([float(batch_size)]), batch_size * grad_bias.double()])
    if not (torch.isfinite(system).all() and torch.isfinite(target).all()):
        # e.g. an all-zero output gradient (no class stands out) or one of overflowing size
        raise GradleakError(
            "the output layer's gradient gives no finite system for the label counts "
            "(it is zero, or too large); no label can be read from it"
        )
    return torch.linalg.lstsq(system, target[:, None]).solution[:, 0]


def round_counts(real: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The non-negative integer counts summing to ``batch_size`` nearest to ``real`` (squared
    error; the greedy steps below are optimal for this separable convex problem)."""
    real = torch.nan_to_num(real.double(), nan=0.0, posinf=batch_size, neginf=0.0)
    real = real.clamp(0, batch_size)
    counts = real.round().long()
    if abs(int(counts.sum()) - batch_size) > len(counts):  # far off: shift all classes at once
        counts = _shifted_counts(real, batch_size)
    while counts.sum() > batch_size:
        excess = torch.where(counts > 0, counts - real, torch.tensor(-torch.inf, dtype=real.dtype))
        counts[int(excess.argmax())] -= 1
    while counts.sum() < batch_size:
        counts[int((counts - real).argmin())] += 1
    return counts


def _shifted_counts(real: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``max(0, round(real - shift))`` for the smallest shift whose counts sum to at most
    ``batch_size`` (bisection): the optimum of the rounding problem for its own sum, so the
    greedy steps of :func:`round_counts` finish it in at most one step per class."""
    low, high = -float(batch_size) - 1.0, float(batch_size) + 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if int((real - middle).round().clamp(min=0).sum()) > batch_size:
            low = middle
        else:
            high = middle
    return (real - high).round().clamp(min=0).long()


def auxiliary_probabilities(
    model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean softmax of ``model`` on auxiliary images: ``(K,)``, or ``(K, K)`` per class with
    labels (NaN rows for classes without images). BatchNorm buffers are left unchanged."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise GradleakError("auxiliary_images must be an (N, C, H, W) tensor of images in [0, 1]")
    if tuple(images.shape[1:]) != tuple(model.input_shape):
        raise GradleakError(
            f"auxiliary images of shape {list(images.shape[1:])} do not fit the model, which "
            f"takes {list(model.input_shape)}"
        )
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    try:
        with torch.no_grad():
            probs = torch.cat(
                [torch.softmax(model(chunk), dim=1) for chunk in images.split(256)]
            ).double()
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    if labels is None:
        return probs.mean(0)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(labels) != len(images):
        raise GradleakError(f"{len(labels)} auxiliary labels for {len(images)} auxiliary images")
    k = probs.shape[1]
    if labels.min() < 0 or labels.max() >= k:
        raise GradleakError(f"auxiliary labels must lie in [0, {k})")
    sums = torch.zeros(k, k, dtype=torch.float64).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=k).double()
    return sums / counts[:, None]  # NaN for classes without images


def class_probabilities(out: OutputGradients, batch_size: int, shrink: float = 2.0) -> torch.Tensor:
    """``(K, K)``: row ``j`` the softmax of class ``j``'s shrunk features (see :func:`bias`)."""
    scaled = batch_size * out.grad_bias
    features = out.grad_weight / _safe(out.grad_bias)[:, None]
    weights = scaled.clamp(min=0).square()
    if weights.sum() <= 0:
        weights = scaled.square()
    mean_feature = (weights[:, None] * features).sum(0) / weights.sum()
    keep = scaled.square() / (scaled.square() + shrink**2)
    shrunk = mean_feature + keep[:, None] * (features - mean_feature)
    return torch.softmax(shrunk @ out.weight.T + out.bias, dim=1)


def require_bias(out: OutputGradients, method: str) -> OutputGradients:
    """``out`` if the output layer has a bias gradient, else a GradleakError naming ``method``."""
    if out.grad_bias is None:
        raise GradleakError(
            f"label recovery '{method}' needs the output layer's bias gradient; output layer "
            f"'{out.name}' has no bias (use 'yin' or 'llg')"
        )
    return out


def _safe(values: torch.Tensor, tiny: float = 1e-30) -> torch.Tensor:
    sign = torch.where(values < 0, -1.0, 1.0).to(values.dtype)
    return torch.where(values.abs() < tiny, sign * tiny, values)


def _labels_from(real: torch.Tensor, batch_size: int) -> torch.Tensor:
    counts = round_counts(real, batch_size)
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def _result(labels: torch.Tensor, method: str, batch_size: int, details=None) -> LabelRecovery:
    labels = torch.as_tensor(labels).long().reshape(-1).sort().values
    values, counts = torch.unique(labels, return_counts=True)
    return LabelRecovery(
        labels=labels,
        counts={int(v): int(c) for v, c in zip(values, counts, strict=True)},
        method=method,
        batch_size=batch_size,
        details=dict(details or {}),
    )


__all__ = [
    "METHODS",
    "LabelRecovery",
    "OutputGradients",
    "auxiliary_probabilities",
    "bias",
    "class_probabilities",
    "idlg",
    "idlg_label",
    "ilrg",
    "llg",
    "output_gradients",
    "recover_labels",
    "require_bias",
    "resolve_batch_size",
    "round_counts",
    "solve_counts",
    "yin",
]
