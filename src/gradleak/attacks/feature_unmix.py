"""Repeated-label batches on networks with a fully-connected head: unmix the features, then invert.

For a classifier ``logits = W h(x) + b`` trained with a mean cross-entropy over B images, the
head's gradient is

    G = [dL/dW | dL/db] = (1/B) sum_i delta_i [h_i | 1]^T,      delta_i = softmax(W h_i + b) - y_i,

the self-consistency equation :mod:`gradleak.attacks.unmix_solve` solves for an MLP's first layer,
here with the identity as "the rest of the network": its solution is every image's own feature
vector ``h_i`` (unknowns: B x B coefficients in G's row space; rank limit: B < number of classes).
Images of one class are no harder than distinct ones: the softmax curvature separates them.

Knowing ``h_i`` and the signal ``g_i = W^T delta_i / B`` reaching it, the body's observed gradient
is the gradient of ``sum_i <h_i(x), g_i>`` with respect to the body's weights, and each image must
reproduce its own features. Recovery then matches, over the images x,

    || d/dtheta sum_i <z_i(x), s_i> - G_body ||^2 / ||G_body||^2
        + lambda sum_i ||z_i(x) - z_i||^2 / ||z||^2 + tv TV(x),                               (*)

where ``z_i`` is the deepest per-image tensor known: the features, or, when the layers before the
head are invertible (sigmoid/tanh/leaky-ReLU after a square or tall linear map, as in LeNet), the
pre-activation R-GAP (Zhu and Blaschko, ICLR 2021) recovers below them, with its signal ``s_i``.
Matching there is better conditioned than through the inverted layers. (*) is solved with
L-BFGS; then the features of the recovered images restart the unmixing (an escape from its local
minima at larger B) and (*) again, keeping the round whose images best explain the whole gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import jacrev

from gradleak.attacks.base import Attack, AttackContext, Reconstruction, requirement
from gradleak.attacks.labels import batch_labels
from gradleak.attacks.matching import MatchingSettings, make_step
from gradleak.attacks.objectives import GradientDistance
from gradleak.attacks.parameterization import CoarsePixels, Pixels
from gradleak.attacks.priors import total_variation
from gradleak.attacks.registry import register_attack
from gradleak.attacks.requirements import LABELS
from gradleak.attacks.rgap import _derivative, _inverse
from gradleak.attacks.unmix_solve import layer_row_space, levenberg_marquardt, subspace_equation
from gradleak.errors import GradleakError
from gradleak.gradient.batch_size import estimate_batch_size, gradient_ranks
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import INVERTIBLE, feedforward_layers, output_layer
from gradleak.models import ImageClassifier

MAX_FRAMES = 60
OPTIMIZERS = ("auto", "lbfgs", "adam")
#: Modules that make the objective piecewise smooth (L-BFGS's line search stalls on them).
NONSMOOTH = (nn.ReLU, nn.MaxPool2d, nn.ReLU6, nn.Hardtanh)
#: Largest layer input (values per image) inverted as a dense matrix below the head.
MAX_INVERTED_INPUT = 4096
#: Singular values of the head's gradient above this many rounding-noise units count toward the
#: batch size: the default 10 misses the weakest of 8 one-class images on LeNet (4.6 units,
#: against 0.3 for the first spurious one).
HEAD_RANK_THRESHOLD = 2.0
#: Relative residual of the unmixing below which a start counts as solved (float32 noise).
SOLVED = 1e-6


@dataclass(frozen=True)
class FeatureUnmixSettings:
    """Settings of :class:`FeatureUnmix` (every field is overridable by keyword).

    Attributes:
        restarts: random starts of the feature unmixing (Levenberg-Marquardt), stopped early
            once one solves the equation to the float32 noise floor.
        unmix_iterations: Levenberg-Marquardt steps per start.
        iterations: L-BFGS steps of the image matching (*) per round.
        lbfgs_inner: L-BFGS iterations per step.
        rounds: unmix-then-match rounds (later rounds restart the unmixing from the recovered
            images' features).
        features: weight lambda of the per-image feature term of (*).
        tv: weight of the total-variation prior of (*) (on the normalized input).
        invert_layers: recover the pre-activations below the head by R-GAP where layers allow.
        resolutions: coarser image sides solved first (coarse to fine, each for ``iterations``
            steps) before the full resolution.
        optimizer: ``"lbfgs"``, ``"adam"`` (Inverting Gradients' signed Adam with step decay,
            ``iterations * lbfgs_inner`` steps: as many evaluations) or ``"auto"``: L-BFGS
            when every activation of the network is smooth, Adam behind ReLU and max-pooling
            (where L-BFGS's line search stalls).
        lr: Adam's step size (on the normalized input).
    """

    restarts: int = 16
    unmix_iterations: int = 300
    iterations: int = 100
    lbfgs_inner: int = 20
    rounds: int = 2
    features: float = 1.0
    tv: float = 1e-4
    invert_layers: bool = True
    resolutions: tuple[int, ...] = (16,)
    optimizer: str = "auto"
    lr: float = 0.1


@requirement("a fully-connected output layer with a bias, and a batch smaller than the classes")
def FEATURE_HEAD(context: AttackContext) -> str | None:
    try:
        _, head = output_layer(context.model)
    except GradleakError as error:
        return str(error)
    if head.bias is None:
        return "the output layer has no bias: the unmixing's bias coordinate is missing"
    classes = head.out_features
    if context.batch_size > classes - 1:
        return (
            f"the output layer's gradient has rank <= {classes - 1} (its {classes} rows sum to "
            f"zero): at most {classes - 1} images' features can be unmixed, the batch has "
            f"{context.batch_size}"
        )
    return None


@dataclass
class Level:
    """The deepest per-image tensor recovered: ``module``'s input (``"input"``) or output.

    Attributes:
        targets: per-image values (B, ...); ``signals``: dL/d(that tensor) per image (B, ...).
        depth: how many layers below the head were inverted to reach it.
    """

    module: nn.Module
    kind: str
    targets: torch.Tensor
    signals: torch.Tensor
    depth: int = 0


@register_attack
class FeatureUnmix(Attack):
    """Recover a batch with repeated labels on a CNN: unmix each image's features, then invert.

    See the module docstring for the equations.

    Applies to any model whose output layer is fully connected with a bias on a feature vector
    (LeNet, ConvNet, ResNets, MLPs) and a batch smaller than the number of classes. Labels: the
    observation's if known, else recovered analytically with their counts; the batch size, when
    hidden, from the gradients' rank.

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,).

    Examples::
        >>> reconstruction = FeatureUnmix()(observation, seed=0)
    """

    name = "feature_unmix"
    defaults = FeatureUnmixSettings()
    requirements = (LABELS, FEATURE_HEAD)
    expected = (
        "every image of the batch, repeated labels included: exact features, images as far as "
        "the body's gradient and the features determine them"
    )

    def guess_batch_size(self, observation) -> int | None:
        """The head's numerical rank at :data:`HEAD_RANK_THRESHOLD` when it is below the head's
        capacity (the images' features are what this attack unmixes), else the default
        estimate."""
        model = observation.build_model()
        for layer in gradient_ranks(observation, model, threshold=HEAD_RANK_THRESHOLD):
            if layer["output"] and 0 < layer["rank"] < layer["capacity"]:
                return int(layer["rank"])
        return estimate_batch_size(observation, model)

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        observation, model, batch_size = context.observation, context.model, context.batch_size
        settings, callback = context.settings, context.callback
        if settings.optimizer not in OPTIMIZERS:
            raise GradleakError(
                f"unknown optimizer {settings.optimizer!r}; choose one of {OPTIMIZERS}"
            )
        labels = batch_labels(observation, model, batch_size)
        head_name, head = output_layer(model)
        unmixing = HeadUnmixing(observation.gradients, head_name, head, labels)
        body = _BodyGradient(model, observation.gradients, head)
        simulator = ClientSimulator(model)
        distance = GradientDistance(
            "cosine", [observation.gradients[n] for n in simulator.names], precise=True
        )
        steps = (_steps(settings, model) + 1) * (1 + len(settings.resolutions))
        total = settings.rounds * steps
        rounds: list[tuple[float, torch.Tensor]] = []
        frames: list[torch.Tensor] = []
        history: list[float] = []
        images = None
        residuals: list[float] = []
        for round_index in range(settings.rounds):
            if images is None:
                starts = [
                    body.features(_noise(model, batch_size, context.generator))
                    for _ in range(settings.restarts)
                ]
            else:  # later rounds start from the recovered images' features
                starts = [body.features(images)]
            features, residual = unmixing.solve(starts, settings.unmix_iterations)
            residuals.append(residual)
            level = _level(model, head, features, unmixing.signals(features), settings)
            done = round_index * steps

            def progress(step: int, value: float, done=done) -> None:
                history.append(value)
                if callback is not None:
                    callback(done + step, total, value)

            images, round_frames = body.match(
                level, images, settings, progress, MAX_FRAMES // settings.rounds
            )
            frames += round_frames
            with torch.no_grad():
                final = float(distance(simulator.gradients(images[None], labels[None]))[0])
            rounds.append((final, images))
        keep = min(range(len(rounds)), key=lambda k: rounds[k][0])
        context.notes["unmixing_residual"] = residuals
        context.notes["inverted_layers"] = level.depth
        return Reconstruction(
            images=rounds[keep][1],
            labels=labels.long(),
            attack=self.name,
            gradient_distance=rounds[keep][0],
            restart_distances=[d for d, _ in rounds],
            history=history,
            frames=frames[-MAX_FRAMES:],
            iterations=len(history),
        )


class HeadUnmixing:
    """The head's self-consistency equation in G's row space, and its solution by restarts."""

    def __init__(self, gradients: dict, head_name: str, head: nn.Linear, labels: torch.Tensor):
        gradient, _, self.basis = layer_row_space(gradients, head_name, len(labels))
        self.weight = head.weight.detach().double()
        self.bias = head.bias.detach().double()
        self.labels = labels
        self.equation = subspace_equation(nn.Identity(), head, gradient, self.basis, labels)

    def solve(self, starts: list[torch.Tensor], iterations: int) -> tuple[torch.Tensor, float]:
        """Features (B, d) from the start with the lowest residual, and that relative residual;
        stops at the first start that reaches :data:`SOLVED`."""
        best: tuple[float, torch.Tensor] | None = None
        for features in starts:
            ones = torch.ones(len(features), 1, dtype=torch.float64)
            start = torch.cat([features.double(), ones], dim=1) @ self.basis
            coefficients, history = levenberg_marquardt(self.equation, start, iterations)
            residual = history[-1] if history else float(self.equation.cost(start)) ** 0.5
            if best is None or residual < best[0]:
                best = (residual, coefficients)
            if residual < SOLVED:
                break
        assert best is not None
        return best[1] @ self.basis[:-1].T, best[0]

    def signals(self, features: torch.Tensor) -> torch.Tensor:
        """dL/dh_i of the batch's mean loss: ``W^T (softmax(W h_i + b) - y_i) / B``."""
        logits = features @ self.weight.T + self.bias
        delta = torch.softmax(logits, 1)
        delta[torch.arange(len(features)), self.labels] -= 1
        return delta @ self.weight / len(features)


def _noise(model: ImageClassifier, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(batch_size, *model.input_shape, generator=generator)


def _level(model, head, features, signals, settings) -> Level:
    """Walk down from the head through invertible layers (R-GAP's per-layer step, weight
    constraints only, one image at a time) as far as each layer's input is determined."""
    level = Level(head, "input", features.float(), signals.float())
    if not settings.invert_layers:
        return level
    try:
        stages = feedforward_layers(model, what="feature_unmix")
    except GradleakError:
        return level
    output, grad_output = features, signals  # a stage's activation output and dL/d(it)
    for depth, stage in enumerate(reversed(stages[:-1]), start=1):
        if not isinstance(stage.activation, INVERTIBLE):
            break
        value = output.reshape(len(output), *stage.out_shape)
        if not _in_range(stage.activation, value):
            break  # noise amplified by the last inversion: keep the level above
        pre = _inverse(stage.activation, value)
        delta = _derivative(stage.activation, pre, value) * grad_output.reshape(value.shape)
        level = Level(stage.layer, "output", pre.float(), delta.float(), depth)
        inputs, outputs = math.prod(stage.in_shape), math.prod(stage.out_shape)
        if outputs < inputs or inputs > MAX_INVERTED_INPUT or stage is stages[0]:
            break
        bias = 0.0
        if stage.layer.bias is not None:
            bias = stage.layer.bias.detach().double().view(-1, *[1] * (len(stage.out_shape) - 1))
        rhs = (pre - bias).reshape(len(pre), -1).T
        output = torch.linalg.lstsq(_dense(stage), rhs, driver="gelsd").solution.T
        grad_output = _transposed(stage, stage.layer.weight.detach().double(), delta)
    return level


def _in_range(activation: nn.Module, value: torch.Tensor) -> bool:
    """Whether every value lies inside the activation's open range (invertible there)."""
    if isinstance(activation, nn.Sigmoid):
        return bool((value > 0).all() and (value < 1).all())
    if isinstance(activation, nn.Tanh):
        return bool((value.abs() < 1).all())
    return True


def _dense(stage) -> torch.Tensor:
    """The layer's weight as a dense (outputs x inputs) matrix, float64, without bias."""
    layer = stage.layer
    weight = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        return weight

    def apply(flat: torch.Tensor) -> torch.Tensor:
        x = flat.view(1, *stage.in_shape)
        return nn.functional.conv2d(x, weight, None, layer.stride, layer.padding).flatten()

    return jacrev(apply)(torch.zeros(math.prod(stage.in_shape), dtype=torch.float64))


def _transposed(stage, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``W^T delta`` per image: dL/d(input) of ``stage`` from dL/d(output)."""
    if isinstance(stage.layer, nn.Linear):
        return delta.reshape(len(delta), -1) @ weight
    layer = stage.layer
    return torch.nn.grad.conv2d_input(
        (len(delta), *stage.in_shape), weight, delta, stride=layer.stride, padding=layer.padding
    )


class _BodyGradient:
    """The body's weight gradient of ``sum_i <z_i(x), s_i>`` and the per-image tensor at a
    :class:`Level`, read with a forward hook."""

    def __init__(self, model: ImageClassifier, gradients: dict, head: nn.Linear):
        self.model, self.gradients, self.head = model, gradients, head
        self.named = dict(model.net.named_parameters())

    def _capture(self, module: nn.Module, kind: str, images: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []

        def hook(_module, inputs, output):
            seen.append(inputs[0] if kind == "input" else output)

        handle = module.register_forward_hook(hook)
        try:
            self.model(images)
        finally:
            handle.remove()
        return seen[-1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._capture(self.head, "input", images).flatten(1).double()

    def match(self, level: Level, start, settings, progress, max_frames: int):
        """Solve (*) from ``start`` (gray when None), coarse to fine over
        ``settings.resolutions``; returns the images and frames. ``progress(step, value)``
        counts steps over all resolutions."""
        model = self.model
        shape = (1, len(level.targets), *model.input_shape)
        probe = self._capture(level.module, level.kind, torch.full(shape[1:], 0.5))
        names = [
            n
            for n, p in self.named.items()
            if p.requires_grad
            and torch.autograd.grad(probe.sum(), p, retain_graph=True, allow_unused=True)[0]
            is not None
        ]
        if not names:
            raise GradleakError("feature_unmix: no weights below the recovered level")
        params = [self.named[n] for n in names]
        target = torch.cat([self.gradients[n].flatten().float() for n in names])
        target_norm = target.pow(2).sum()
        wanted = level.targets.reshape(probe.shape)
        wanted_norm = wanted.pow(2).sum()
        signals = level.signals.reshape(probe.shape)

        def objective(pixels) -> torch.Tensor:
            images = pixels.images()[0]
            value = self._capture(level.module, level.kind, images)
            inner = (value * signals).sum()
            grads = torch.autograd.grad(inner, params, create_graph=True)
            flat = torch.cat([g.flatten() for g in grads])
            loss = (flat - target).pow(2).sum() / target_norm
            loss = loss + settings.features * (value - wanted).pow(2).sum() / wanted_norm
            normalized = (images - model.mean) / model.std
            return loss + settings.tv * total_variation(normalized[None])[0]

        adam = _uses_adam(settings, model)
        sizes = [r for r in settings.resolutions if r < min(shape[-2:])] + [min(shape[-2:])]
        every = max(1, _steps(settings, model) * len(sizes) // max(1, max_frames))
        frames: list[torch.Tensor] = []
        images, done = start, 0
        for size in sizes:
            init = "gray" if images is None else images
            if size < min(shape[-2:]):
                pixels = CoarsePixels(shape, size, init=init, mean=model.mean, std=model.std)
            else:
                pixels = Pixels(shape, init=init, boxed=True, mean=model.mean, std=model.std)
            for value in _optimize(pixels, objective, settings, adam):
                progress(done, value)
                if done % every == 0:
                    frames.append(pixels.images()[0].detach().clamp(0, 1))
                done += 1
            pixels.project_()
            images = pixels.images()[0].detach()
        frames.append(images)
        return images, frames


def _uses_adam(settings, model: ImageClassifier) -> bool:
    smooth = not any(isinstance(m, NONSMOOTH) for m in model.net.modules())
    return settings.optimizer == "adam" or (settings.optimizer == "auto" and not smooth)


def _steps(settings, model: ImageClassifier) -> int:
    """Optimizer steps per resolution (Adam: as many as L-BFGS's evaluations)."""
    adam = _uses_adam(settings, model)
    return settings.iterations * (settings.lbfgs_inner if adam else 1)


def _optimize(pixels, objective, settings, adam: bool):
    """Yield (*)'s value before and after each step of the chosen optimizer."""
    variables = pixels.parameters()
    if adam:
        adam = MatchingSettings(
            optimizer="adam",
            lr=settings.lr,
            iterations=settings.iterations * settings.lbfgs_inner,
            signed=True,
            schedule="step",
        )
        step = make_step(adam, variables, lambda: objective(pixels), pixels)
        yield float(objective(pixels).detach())
        for it in range(adam.iterations):
            value = float(step(it))
            if not math.isfinite(value):
                return
            yield value
        return
    optimizer = torch.optim.LBFGS(
        variables,
        lr=1.0,
        max_iter=settings.lbfgs_inner,
        history_size=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
    )

    def closure():
        optimizer.zero_grad()
        loss = objective(pixels)
        if torch.isfinite(loss):
            loss.backward(inputs=variables)
        return loss

    for step in range(settings.iterations + 1):
        value = float((optimizer.step(closure) if step else objective(pixels)).detach())
        if not math.isfinite(value):
            return
        yield value
