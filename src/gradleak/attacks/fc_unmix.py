"""Batch recovery by unmixing the first fully-connected layer's gradient.

Gradient inversion as blind source separation, after the Cocktail Party Attack (Kariyappa et al.,
ICML 2023, https://arxiv.org/abs/2209.05578): for a network whose first layer is
``z = W x + b``, the averaged gradient is ``G = [dL/dW | dL/db] = Delta [X | 1]``, with column i
of Delta (n x B) the sample's gradient at z divided by B, so every input row ``[x_i | 1]`` lies in
the top-B right singular subspace V of G and the attack only has to find the B x B unmixing. The
batch size is the numerical rank of G. Repeated labels do not matter: nothing is read from the
output layer per class.

Three unmixings (``method="auto"``, the default, takes ``sparse`` when a ReLU follows the first
layer and ``exact`` otherwise):

- ``method="sparse"``: behind ReLU, each sample's gradient at the first layer's output is exactly
  zero on the units where the sample is off, so the columns of Delta are the sparse directions of
  G's left singular subspace (SPEAR, Dimitrov et al. 2024, https://arxiv.org/abs/2403.03945; see
  :mod:`gradleak.attacks.unmix_sparse`); once all B are found, the inputs follow in closed form,
  exact up to the float32 noise of the observation.
- ``method="exact"``: solve the self-consistency equation
  ``(1/B) sum_i delta(x_i) [x_i | 1]^T = G`` restricted to V (see
  :mod:`gradleak.attacks.unmix_solve`), where ``delta(x)`` is the per-sample gradient at the
  first layer's output, computed by the attacker's copy of the network (white box) — the deeper
  layers' constraint in closed form, plus the bias coordinate ``[x_i | 1]``. Solved by
  Levenberg-Marquardt in float64 from a random start; recovery is exact up to the float32
  noise of the observation for smooth activations (sigmoid, tanh). With ReLU, ``delta`` is
  piecewise constant in x and the solver stalls (18 dB at B = 16, one class): hence ``sparse``.
- ``method="cpa"``: CPA's ICA (negentropy + total variation + decorrelation, see
  :mod:`gradleak.attacks.unmix_cpa`), scale and sign fixed by the bias coordinate.

An optional gradient-matching polish (cosine distance + TV over boxed pixels, the shared engine
parts) starts from the unmixed images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from gradleak.attacks.base import Attack, AttackContext, Reconstruction, requirement
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.objectives import GradientDistance
from gradleak.attacks.parameterization import Pixels
from gradleak.attacks.priors import total_variation
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import IMAGE_LAYER, LABELS
from gradleak.attacks.unmix_cpa import cpa_unmix
from gradleak.attacks.unmix_solve import (
    FirstLayerEquation,
    layer_row_space,
    levenberg_marquardt,
    subspace_equation,
)
from gradleak.attacks.unmix_sparse import sparse_unmix
from gradleak.errors import GradleakError
from gradleak.gradient.batch_size import estimate_batch_size
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import batchnorm_layers, image_layer
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

METHODS = ("auto", "sparse", "exact", "cpa")
MAX_FRAMES = 60


@dataclass(frozen=True)
class FCUnmixSettings:
    """Settings of :class:`FCUnmix` (every field is overridable by keyword).

    Attributes:
        method: ``"auto"`` (``sparse`` when a ReLU follows the first layer, else ``exact``),
            ``"sparse"`` (sparse directions behind ReLU), ``"exact"`` (self-consistency
            equation) or ``"cpa"`` (ICA only).
        iterations: Levenberg-Marquardt steps per restart (``exact``) or per descent start
            (``sparse``, at most), or Adam steps (``cpa``).
        restarts: random starts run one after the other (``exact``, ``cpa``); the one whose
            images best reproduce the whole observed gradient (cosine distance) is kept.
        starts: ``sparse``: descent starts per sample still missing, in each of up to 4 rounds.
        draws: ``sparse``: most random row subsets of SPEAR's sampling, for samples the
            descent leaves (or all, when no linear layer follows the ReLU).
        zero_tolerance: ``sparse``: entries below this fraction of a vector's largest count as
            zero (the float32 observation leaves about 1e-7).
        damping: initial Levenberg-Marquardt damping.
        bias_weight: weight of the bias-coordinate residual ``[x_i | 1]`` in ``exact``.
        lr: Adam step size of the ICA.
        tv: weight of the ICA's total-variation prior (on standardized components).
        decorrelation: weight of the ICA's mutual-independence (decorrelation) penalty.
        box: weight of the ICA's box penalty (pixels in [0, 1] after bias scaling).
        refine_iterations: gradient-matching steps after unmixing (0: none).
        refine_lr, refine_tv: Adam step size and TV weight of that polish.
    """

    method: str = "auto"
    iterations: int = 200
    restarts: int = 1
    starts: int = 4
    draws: int = 100_000
    zero_tolerance: float = 1e-4
    damping: float = 1e-3
    bias_weight: float = 1.0
    lr: float = 0.01
    tv: float = 0.2
    decorrelation: float = 1.0
    box: float = 0.0
    refine_iterations: int = 0
    refine_lr: float = 0.01
    refine_tv: float = 1e-4


@dataclass
class FCSubspace:
    """The first layer's gradient factored for unmixing.

    Attributes:
        name: the layer's name in ``model.net``; ``layer``: the module; ``index``: its position.
        gradient: ``[dL/dW | dL/db]`` (n_out x (n_in + 1)), float64.
        singular_values: all singular values of ``gradient``, descending.
        basis: top-B right singular vectors ((n_in + 1) x B), bias coordinate last.
    """

    name: str
    layer: nn.Linear
    index: int
    gradient: torch.Tensor
    singular_values: torch.Tensor
    basis: torch.Tensor


def _width_problem(layer: nn.Linear, batch_size: int) -> str | None:
    if layer.out_features < batch_size:
        return (
            f"the first layer has {layer.out_features} outputs, fewer than the batch size "
            f"{batch_size}: its gradient has rank <= {layer.out_features}, too low to unmix "
            f"{batch_size} images"
        )
    if layer.in_features + 1 < batch_size:
        return f"the first layer has {layer.in_features} inputs: cannot unmix {batch_size} images"
    return None


@requirement("an nn.Sequential MLP whose first layer is at least as wide as the batch")
def UNMIXABLE(context: AttackContext) -> str | None:
    try:
        found = image_layer(context.model, what="fc_unmix")
    except GradleakError:
        return None  # IMAGE_LAYER says why
    index = found.index
    if index is None:
        return "fc_unmix needs an nn.Sequential network"
    if context.settings.method not in METHODS:
        return f"unknown method {context.settings.method!r}; choose one of {METHODS}"
    problem = _width_problem(found.layer, context.batch_size)
    method = resolve_method(context.settings.method, context.model, index)
    if problem is None and method == "sparse" and not _behind_relu(context.model, index):
        problem = (
            "fc_unmix's sparse method needs a ReLU right after the first linear layer "
            "(use method='exact' or 'cpa')"
        )
    if problem is None and method == "exact" and _coupled(context.model, index):
        problem = (
            "fc_unmix's exact method needs a network that treats samples independently; "
            "train-mode BatchNorm couples them (use method='cpa' or bn_mode='eval')"
        )
    return problem


def resolve_method(method: str, model: ImageClassifier, index: int | None) -> str:
    """``method``, with ``auto`` resolved: ``sparse`` when a ReLU follows the first linear layer
    (child ``index`` of ``model.net``), else ``exact``."""
    if method not in METHODS:
        raise GradleakError(f"unknown method {method!r}; choose one of {METHODS}")
    if method != "auto":
        return method
    return "sparse" if index is not None and _behind_relu(model, index) else "exact"


def _behind_relu(model: ImageClassifier, index: int) -> bool:
    children = list(model.net.children())
    return index + 1 < len(children) and isinstance(children[index + 1], nn.ReLU)


def fc_subspace(observation: Observation, model: ImageClassifier, batch_size: int) -> FCSubspace:
    """Factor the observed gradient ``[dL/dW | dL/db] = Delta [X | 1]`` of the first linear layer
    for ``batch_size`` (raises GradleakError when the layer is narrower than the batch)."""
    found = image_layer(model, what="fc_unmix")
    name, index, layer = found.name, found.index, found.layer
    if index is None:
        raise GradleakError(
            f"fc_unmix needs an nn.Sequential network; model '{model.config.get('name')}' is not"
        )
    problem = _width_problem(layer, batch_size)
    if problem:
        raise GradleakError(problem)
    gradient, singular_values, basis = layer_row_space(observation.gradients, name, batch_size)
    return FCSubspace(name, layer, index, gradient, singular_values, basis)


@register_attack
class FCUnmix(Attack):
    """Recover a whole batch, repeated labels included, by unmixing the first FC layer.

    Cocktail Party Attack (Kariyappa et al., ICML 2023, https://arxiv.org/abs/2209.05578) as
    ``method="cpa"``. By default, behind ReLU (e.g. ``fc_relu``, ``mlp4_relu``) the unmixing finds
    the sparse directions of the gradient (``"sparse"``, after SPEAR, Dimitrov et al. 2024,
    https://arxiv.org/abs/2403.03945), and otherwise it solves the first layer's
    self-consistency equation (``"exact"``, for smooth activations, e.g. ``mlp4``, and samples
    treated independently: no train-mode BatchNorm); see the module docstring. Both are exact
    for networks that start with ``Flatten -> Linear``.

    Labels: the observation's if known, else recovered analytically with their counts
    (:func:`gradleak.attacks.labels.batch_labels`). The batch size, when hidden and not passed,
    is estimated from the gradients' rank (:func:`gradleak.gradient.estimate_batch_size`).

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,).

    Examples::
        >>> reconstruction = FCUnmix()(observation, restarts=2)
        >>> score_batch(reconstruction.images, observation.truth.images).psnr.mean()
    """

    name = "fc_unmix"
    defaults = FCUnmixSettings()
    requirements = (LABELS, IMAGE_LAYER, UNMIXABLE)
    expected = (
        "every image of the batch, repeated labels included (exact for MLPs with ReLU or "
        "smooth activations)"
    )

    def expectation(self, context: AttackContext) -> str:
        index = image_layer(context.model, what="fc_unmix").index
        method = resolve_method(context.settings.method, context.model, index)
        if method == "exact" and any(isinstance(m, nn.ReLU) for m in context.model.net.modules()):
            return (
                "every image, repeated labels included, but the exact solve stalls behind ReLU "
                "(18 dB at batch size 16, one class, measured); method='sparse' is the alternative "
                "when a ReLU follows the first layer"
            )
        if method == "sparse":
            return (
                "every image, repeated labels included, exactly once all B sparse directions are "
                "found (measured on CIFAR-10, labels and batch size hidden: 152-164 dB on fc_relu "
                "at B = 4..32 and mlp4_relu at B = 16, one class or mixed)"
            )
        return self.expected

    def guess_batch_size(self, observation: Observation) -> int | None:
        return estimate_batch_size(observation)

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        observation, model, batch_size = context.observation, context.model, context.batch_size
        settings, generator, callback = context.settings, context.generator, context.callback
        space = fc_subspace(observation, model, batch_size)
        method = resolve_method(settings.method, model, space.index)
        labels = batch_labels(observation, model, batch_size)
        shape = model.input_shape
        mean, std = model.mean.double(), model.std.double()

        def images_of(coefficients: torch.Tensor) -> torch.Tensor:
            inputs = (coefficients @ space.basis[:-1].T).view(batch_size, *shape)
            return (inputs * std + mean).clamp(0, 1).float()

        total = settings.iterations * settings.restarts
        frame_every = max(1, settings.iterations // MAX_FRAMES)
        runs: list[tuple[torch.Tensor, list[float], list[torch.Tensor]]] = []
        if method == "sparse":
            coefficients, labels, found = _sparse(
                space, observation, model, labels, settings, generator, callback
            )
            context.notes["sparse"] = found
            runs.append((coefficients, [float("nan")], [images_of(coefficients)]))
        equation = (
            None if method == "sparse" else _equation(space, model, labels, settings.bias_weight)
        )
        for restart in range(settings.restarts if method != "sparse" else 0):
            done = restart * settings.iterations
            if method == "cpa":
                coefficients = cpa_unmix(
                    space.basis,
                    shape,
                    model.mean,
                    model.std,
                    iterations=settings.iterations,
                    lr=settings.lr,
                    tv=settings.tv,
                    decorrelation=settings.decorrelation,
                    box=settings.box,
                    generator=generator,
                )
                residual = float(equation.cost(coefficients)) ** 0.5 if equation else float("nan")
                runs.append((coefficients, [residual], [images_of(coefficients)]))
                if callback is not None:
                    callback(done + settings.iterations, total, residual)
                continue
            frames: list[torch.Tensor] = []

            def on_step(it: int, coefficients, residual: float, done=done, frames=frames):
                if it % frame_every == 0:
                    frames.append(images_of(coefficients))
                if callback is not None:
                    callback(done + it + 1, total, residual)

            coefficients, history = levenberg_marquardt(
                equation,
                _random_start(space.basis, model, generator),
                settings.iterations,
                damping=settings.damping,
                on_step=on_step,
            )
            frames.append(images_of(coefficients))
            runs.append((coefficients, history, frames))

        # Keep the restart whose images best explain the whole observed gradient.
        simulator = ClientSimulator(model)
        distance = GradientDistance(
            "cosine", [observation.gradients[n] for n in simulator.names], precise=True
        )
        candidates = torch.stack([images_of(c) for c, _, _ in runs])
        with torch.no_grad():
            distances = distance(simulator.gradients(candidates, labels.expand(len(runs), -1)))
        keep = int(torch.nan_to_num(distances, nan=torch.inf).argmin())
        images, final_distance = candidates[keep], float(distances[keep])
        if settings.refine_iterations > 0:
            images, final_distance = _refine(images, labels, simulator, distance, settings)
        longest = max(len(h) for _, h, _ in runs)
        return Reconstruction(
            images=images,
            labels=labels.long(),
            attack=self.name,
            gradient_distance=final_distance,
            restart_distances=[float(d) for d in distances],
            history=[min(h[min(i, len(h) - 1)] for _, h, _ in runs) for i in range(longest)],
            frames=runs[keep][2][-MAX_FRAMES:],
            iterations=total if method == "cpa" else sum(len(h) for _, h, _ in runs),
        )


def _sparse(space: FCSubspace, observation, model, labels, settings, generator, callback):
    """Coefficients (B x B) by :func:`~gradleak.attacks.unmix_sparse.sparse_unmix`, ``labels``
    paired with them (:func:`_pair_labels`) and what it found (for the reconstruction's notes)."""
    batch = space.basis.shape[1]
    U, S, _ = torch.linalg.svd(space.gradient, full_matrices=False)
    weight, bias = space.layer.weight.detach().double(), space.layer.bias.detach().double()
    preactivations = weight @ space.basis[:-1] + bias[:, None] * space.basis[-1][None]
    result = sparse_unmix(
        U[:, :batch],
        S[:batch],
        space.basis[-1],
        preactivations,
        _relu_outputs(observation, model, space.index, batch),
        starts=settings.starts,
        steps=settings.iterations,
        draws=settings.draws,
        tolerance=settings.zero_tolerance,
        spread=_spread(space.basis, model),
        generator=generator,
        progress=None
        if callback is None
        else lambda done, total: callback(done, total, float("nan")),
    )
    found = {
        key: getattr(result, key)
        for key in ("descended", "sampled", "completed", "missing", "draws")
    }
    if result.missing:
        found["warning"] = (
            f"{result.missing} of {batch} samples not found: the images are not exact "
            "(raise draws or starts)"
        )
    signals = U[:, :batch] @ result.directions  # column i: sample i's delta, up to scale
    per_sample = observation.labels is None and not result.missing
    labels = _pair_labels(space, model, result.coefficients, signals, labels, per_sample)
    found["labels"] = (
        "per sample: the class whose gradient matches the unmixed one"
        if per_sample
        else "the batch's labels, paired with the samples by their unmixed gradients"
    )
    return result.coefficients, labels, found


def _pair_labels(space, model, coefficients, signals, labels, per_sample: bool) -> torch.Tensor:
    """A label for each unmixed sample: the class y for which its gradient at the first layer's
    output, ``delta(x_i, y)`` from the attacker's copy of the network (in eval mode), is most
    nearly parallel to its unmixed signal (``per_sample``; exact once the images are), or else
    ``labels`` (the batch's, known or recovered, in any order) assigned by that measure
    (Hungarian)."""
    if not per_sample and len(labels.unique()) == 1:
        return labels
    rest = nn.Sequential(*list(model.net.children())[space.index + 1 :])
    rest = copy.deepcopy(rest).double().eval().requires_grad_(False)
    weight, bias = space.layer.weight.detach().double(), space.layer.bias.detach().double()
    z = coefficients @ space.basis[:-1].T @ weight.T + bias
    classes = torch.arange(rest(z[:1]).shape[1]) if per_sample else labels.unique()
    alignment = []
    for y in classes:
        point = z.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(rest(point), y.expand(len(z)), reduction="sum")
        (delta,) = torch.autograd.grad(loss, point)
        alignment.append(nn.functional.cosine_similarity(delta, signals.T, dim=1).abs())
    alignment = torch.stack(alignment, 1)  # sample x class
    if per_sample:
        return classes[alignment.argmax(1)]
    cost = -alignment[:, torch.searchsorted(classes, labels)]  # sample x slot
    _, slots = linear_sum_assignment(cost.numpy())
    return labels[torch.as_tensor(slots)]


def _relu_outputs(observation, model, index: int, batch: int) -> torch.Tensor | None:
    """An orthonormal basis (n x B) of the ReLU outputs' span, from the weight gradient of the
    linear layer that reads them (child ``index + 2``), or None without one (or when it is too
    narrow to hold B independent rows)."""
    children = list(model.net.named_children())
    if index + 2 >= len(children) or not isinstance(children[index + 2][1], nn.Linear):
        return None
    gradient = observation.gradients.get(f"{children[index + 2][0]}.weight")
    if gradient is None or min(gradient.shape) < batch:
        return None
    _, s, vh = torch.linalg.svd(gradient.double(), full_matrices=False)
    if s[batch - 1] <= 1e-6 * s[0]:
        return None
    return vh[:batch].T


def _spread(basis: torch.Tensor, model: ImageClassifier) -> float:
    """The typical norm of a normalized input (uniform-noise pixels)."""
    pixel_rms = (((0.5 - model.mean) ** 2 + 1 / 12).sqrt() / model.std).mean()
    return float(pixel_rms) * (basis.shape[0] - 1) ** 0.5


def _equation(
    space: FCSubspace, model: ImageClassifier, labels: torch.Tensor, bias_weight: float
) -> FirstLayerEquation | None:
    """The self-consistency equation of ``space``, or None when samples are not independent
    (train-mode BatchNorm after the first layer)."""
    if _coupled(model, space.index):
        return None
    rest = nn.Sequential(*list(model.net.children())[space.index + 1 :])
    rest = copy.deepcopy(rest).double().requires_grad_(False)
    return subspace_equation(rest, space.layer, space.gradient, space.basis, labels, bias_weight)


def _coupled(model: ImageClassifier, index: int) -> bool:
    """Whether train-mode BatchNorm after the first layer (child ``index``) couples samples."""
    rest = list(model.net.children())[index + 1 :]
    return model.training and any(batchnorm_layers(m) for m in rest)


def _random_start(basis: torch.Tensor, model: ImageClassifier, generator) -> torch.Tensor:
    """B random coefficient rows with bias coordinate 1, spread like uniform-noise images."""
    size = basis.shape[1]
    bias_row = basis[-1]
    spread = _spread(basis, model) / size**0.5
    start = torch.randn(size, size, generator=generator, dtype=torch.float64) * spread
    start += (1 - start @ bias_row)[:, None] * bias_row[None, :] / bias_row.dot(bias_row)
    return start


def _refine(images, labels, simulator, distance, settings):
    """Gradient-matching polish from the unmixed images (cosine + TV, boxed pixels, Adam).
    Returns the iterate with the lowest gradient distance and that distance."""
    model = simulator.model
    pixels = Pixels((1, *images.shape), init="gray", boxed=True, mean=model.mean, std=model.std)
    with torch.no_grad():
        pixels.data.copy_((images[None] - model.mean) / model.std)
    optimizer = torch.optim.Adam(pixels.parameters(), lr=settings.refine_lr)
    best, best_distance = images.clone(), float("inf")
    iterations = settings.refine_iterations
    for step in range(iterations + 1):
        candidate = pixels.images()
        dist = distance(simulator.gradients(candidate, labels[None]))
        if float(dist.detach()) < best_distance:
            best, best_distance = candidate[0].detach().clone(), float(dist.detach())
        if step == iterations:
            break
        loss = (dist + settings.refine_tv * total_variation(candidate)).sum()
        optimizer.zero_grad()
        loss.backward(inputs=pixels.parameters())
        optimizer.step()
        pixels.project_()
    return best, best_distance
