"""Gradient matching assembled from shared parts; DLG, iDLG and Inverting Gradients configure it.

    argmin_{x, y}  D( grad_theta L(f_theta(x), y),  g_observed )  +  sum_k  lambda_k R_k(x)

The parts: the client simulator (vmapped restarts), a gradient distance D (l2 or cosine), a pixel
parameterization (boxed or free), priors R_k (total variation; GradInversion's image norm,
BatchNorm statistics and group consistency), a label strategy (known, analytic, joint) and an
optimizer (L-BFGS, or Adam, optionally on signed gradients, with a step or cosine schedule). All
restarts are one batched tensor; each restart keeps its best iterate and the restart with the
lowest gradient distance is returned.

Inside :func:`keeping_best` the loop hands its best iterate so far to a keeper every ``every``
seconds of wall time and, on Ctrl-C, after the step it interrupts (then raises
KeyboardInterrupt), so that an interrupted run keeps its progress; the experiments write it to
the case's ``partial.*`` files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar

import torch

from gradleak.attacks.base import Attack, AttackContext, Reconstruction
from gradleak.attacks.bn_statistics import (
    BN_STATISTICS,
    DEFAULT_PROXY,
    batchnorm_target,
    check_target,
)
from gradleak.attacks.labels import fixed_labels, refine_labels, resolve_strategy
from gradleak.attacks.objectives import GradientDistance
from gradleak.attacks.parameterization import Pixels
from gradleak.attacks.priors import (
    GroupConsistency,
    batchnorm_distance,
    image_norm,
    total_variation,
)
from gradleak.attacks.requirements import LABELS
from gradleak.errors import GradleakError
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import batchnorm_layers
from gradleak.interrupts import StepInterrupts
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

OPTIMIZERS = ("adam", "lbfgs")
SCHEDULES = ("constant", "step", "cosine")
RECIPES = ("auto", "trained", "as-set")


def is_trained(model) -> bool:
    """Whether ``model`` looks trained: some BatchNorm layer's running statistics have left their
    initial values (mean 0, variance 1). A network without BatchNorm reads as untrained; pass
    ``recipe="trained"`` for one."""
    for layer in batchnorm_layers(model):
        if layer.running_mean is None:
            continue
        moved = layer.running_mean.abs().max() > 1e-6 or (layer.running_var - 1).abs().max() > 1e-6
        if bool(moved):
            return True
    return False


MAX_FRAMES = 60


@dataclass(frozen=True)
class MatchingSettings:
    """Settings of a gradient-matching attack (every field is overridable by keyword).

    Attributes:
        distance: ``"l2"`` (DLG) or ``"cosine"`` (Inverting Gradients).
        optimizer: ``"lbfgs"`` (DLG) or ``"adam"``.
        lr: step size.
        iterations: optimizer steps (an L-BFGS step runs up to ``lbfgs_inner`` inner iterations).
        restarts: random initializations optimized together as one batch.
        tv: weight of the total-variation prior (0 disables it).
        l2: weight of the image-norm prior (GradInversion's R_l2).
        bn: weight of the BatchNorm-statistics prior (GradInversion's R_BN; needs BN layers).
        bn_statistics: the BN prior's target (Huang et al., NeurIPS 2021; see
            :mod:`gradleak.attacks.bn_statistics`): ``"running"`` (the model's running
            statistics, their BN_infer), ``"exact"`` (the batch's own, granted by the threat
            model: their BN_exact) or ``"proxy"`` (a same-size batch of ``bn_proxy`` images:
            their BN_proxy).
        bn_proxy: the auxiliary images (a :func:`gradleak.data.auxiliary.auxiliary_images` spec)
            the ``"proxy"`` target draws its batch from, with the attack seed.
        group: weight of group consistency across restarts (GradInversion's R_group).
        group_every: steps between re-registrations of the restarts' consensus.
        labels: ``"auto"``, ``"known"``, ``"analytic"`` (iDLG, batch size 1) or ``"joint"`` (DLG).
        init: ``"randn"``, ``"rand"`` or ``"gray"``.
        boxed: clamp pixels to [0, 1] after each step.
        signed: use the sign of the image gradient (Inverting Gradients' signed Adam).
        schedule: Adam's step size over the run: ``"constant"``, ``"step"`` (x0.1 at 3/8, 5/8
            and 7/8, Inverting Gradients) or ``"cosine"`` (cosine decay, GradInversion).
        warmup: steps of linear step-size warm-up before the schedule.
        layer_weights: one weight per parameter tensor for the distance, or None.
        lbfgs_inner: L-BFGS iterations per step.
        patience: stop when the objective has not improved for this many steps (None: never).
        local_lr: for a FedAvg update whose learning rate the threat model hides, the assumed
            one (the initial value when it is learned).
        learn_lr: optimize that hidden learning rate (its log, per restart) with the images.
        refine_labels: after a joint run, refine its labels by coordinate descent on the
            gradient distance of the final images (:func:`gradleak.attacks.labels.
            refine_labels`).
        estimate_batch_size: when the threat model hides the batch size and the caller gives
            no guess, estimate it from the gradient (:func:`gradleak.gradient.batch_size.
            estimate_batch_size`, ``"auto"``) instead of refusing to run.
        recipe: ``"auto"``: on a trained network (:func:`is_trained`) the settings the caller
            did not set take the attack's trained-network values (``trained_recipe``; only
            ``inverting_gradients``, ``gradinversion`` and ``learned`` have them, measured by
            ``benchmarks/realistic.py``); ``"trained"``: those values whatever the network;
            ``"as-set"``: the settings as they are.
    """

    distance: str = "l2"
    optimizer: str = "lbfgs"
    lr: float = 1.0
    iterations: int = 300
    restarts: int = 1
    tv: float = 0.0
    l2: float = 0.0
    bn: float = 0.0
    bn_statistics: str = "running"
    bn_proxy: str = DEFAULT_PROXY
    group: float = 0.0
    group_every: int = 100
    labels: str = "auto"
    init: str = "randn"
    boxed: bool = False
    signed: bool = False
    schedule: str = "constant"
    warmup: int = 0
    layer_weights: tuple[float, ...] | None = None
    lbfgs_inner: int = 20
    patience: int | None = None
    local_lr: float = 0.01
    learn_lr: bool = True
    refine_labels: bool = True
    estimate_batch_size: bool = False
    recipe: str = "auto"


@dataclass(frozen=True)
class BestSoFar:
    """The best iterate of a running optimization, as handed to a keeper.

    Attributes:
        step: optimizer steps run; ``total``: the steps asked for.
        images: (B, C, H, W) in [0, 1] on the CPU; ``labels``: (B,) (not refined yet).
        gradient_distance: its gradient distance; ``seconds``: wall time since the start.
        interrupted: kept because of Ctrl-C (the run stops after this).
    """

    attack: str
    step: int
    total: int
    images: torch.Tensor
    labels: torch.Tensor
    gradient_distance: float
    seconds: float
    interrupted: bool = False


_KEEPER: ContextVar[tuple[Callable[[BestSoFar], None], float] | None] = ContextVar(
    "gradleak_keeper", default=None
)


@contextlib.contextmanager
def keeping_best(keep: Callable[[BestSoFar], None], every: float = 30.0):
    """Inside, every gradient-matching optimization calls ``keep(best)`` (:class:`BestSoFar`)
    every ``every`` seconds of wall time, and on Ctrl-C once the interrupted step is over (then
    raises KeyboardInterrupt): an interrupted run keeps its progress."""
    token = _KEEPER.set((keep, every))
    try:
        yield
    finally:
        _KEEPER.reset(token)


class _BestIterates:
    """Keeps, per restart, the iterate with the lowest objective seen so far."""

    def __init__(self, restarts: int, device: torch.device):
        self.objective = torch.full((restarts,), float("inf"), device=device)
        self.distance = torch.full((restarts,), float("inf"), device=device)
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    @torch.no_grad()
    def update(
        self,
        objective: torch.Tensor,
        distance: torch.Tensor,
        images: torch.Tensor,
        labels: torch.Tensor,
    ) -> None:
        objective = torch.where(torch.isfinite(objective), objective, torch.inf)
        better = objective < self.objective
        if self.images is None:
            self.images = images.detach().clone()
            self.labels = labels.detach().clone()
        if better.any():
            self.objective = torch.where(better, objective, self.objective)
            self.distance = torch.where(better, distance.detach(), self.distance)
            self.images[better] = images.detach()[better]
            self.labels[better] = labels.detach()[better]

    def best_restart(self) -> int:
        return int(torch.nan_to_num(self.distance, nan=torch.inf).argmin())

    def so_far(self, attack: str, step: int, total: int, start: float, interrupted: bool):
        keep = self.best_restart()
        labels = self.labels[keep]
        return BestSoFar(
            attack=attack,
            step=step,
            total=total,
            images=self.images[keep].clamp(0, 1).cpu(),
            labels=(labels.argmax(-1) if labels.is_floating_point() else labels).long().cpu(),
            gradient_distance=float(self.distance[keep]),
            seconds=time.perf_counter() - start,
            interrupted=interrupted,
        )


@dataclass
class Stage:
    """One phase of the optimization: what is optimized, for how many steps, at what step size.

    ``parameterization`` is any object with ``parameters() -> list[Tensor]`` (the variables),
    ``images() -> (R, B, C, H, W)`` pixels differentiable in them, and ``project_()`` (applied
    after every step): free pixels, a generator's latent or weights, an untrained network.
    """

    parameterization: object
    iterations: int
    lr: float | None = None
    name: str = ""


def free_pixels(context: AttackContext, init: str | torch.Tensor | None = None) -> Pixels:
    """Free pixels for every restart, initialized as the settings say (or from ``init``)."""
    s = context.settings
    return Pixels(
        (s.restarts, context.batch_size, *context.model.input_shape),
        init=s.init if init is None else init,
        boxed=s.boxed,
        generator=context.generator,
        mean=context.model.mean,
        std=context.model.std,
        device=context.device,
    )


class GradientMatchingAttack(Attack):
    """Optimization-based gradient inversion from shared parts (see module docstring).

    Subclasses change what is optimized by overriding :meth:`stages`; objective, priors, labels,
    optimizer loop, best-iterate tracking and frames stay the same for every attack.
    """

    name = "gradient_matching"
    defaults = MatchingSettings()
    requirements = (LABELS, BN_STATISTICS)
    reads_updates = True

    def __init__(self, **overrides):
        super().__init__(**overrides)
        check_target(self.settings.bn_statistics)

    #: settings that replace the defaults on a trained network (the ``recipe`` setting)
    trained_recipe: ClassVar[dict] = {}

    def configure(self, context: AttackContext) -> None:
        """Apply the trained-network recipe where it is due; switch off GradInversion's BN prior
        on models without BatchNorm running statistics and group consistency with a single
        restart."""
        self.apply_recipe(context)
        s = context.settings
        if s.bn:
            layers = batchnorm_layers(context.model)
            if not layers or any(m.running_mean is None for m in layers):
                what = "no BatchNorm layers" if not layers else "BatchNorm without running stats"
                context.disable("bn", f"the BatchNorm prior needs them; the model has {what}")
        if s.group and s.restarts < 2:
            context.disable("group", "group consistency needs at least 2 restarts")
        if s.estimate_batch_size and context.observation.known_batch_size is None:
            context.notes["batch_size"] = f"estimated from the gradient: {context.batch_size}"

    def apply_recipe(self, context: AttackContext) -> None:
        """``trained_recipe`` for the settings the caller did not set, when ``recipe`` asks."""
        recipe = context.settings.recipe
        if recipe not in RECIPES:
            raise GradleakError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")
        if not self.trained_recipe or recipe == "as-set":
            return
        if recipe == "auto" and not is_trained(context.model):
            return
        changes = {k: v for k, v in self.trained_recipe.items() if k not in context.explicit}
        if changes:
            context.settings = dataclasses.replace(context.settings, **changes)
            context.notes["recipe"] = {"trained network": changes}

    def guess_batch_size(self, observation: Observation) -> int | None:
        """With ``estimate_batch_size``: the estimate of :func:`gradleak.gradient.batch_size.
        estimate_batch_size` (``"auto"``); otherwise None (the caller must give a guess)."""
        if not self.settings.estimate_batch_size:
            return None
        from gradleak.gradient.batch_size import estimate_batch_size

        return int(estimate_batch_size(observation))

    def simulator(self, context: AttackContext) -> ClientSimulator:
        """The replay of what the client sent, for ``context.model`` on its device."""
        settings = context.settings
        return ClientSimulator(
            context.model,
            batch_statistics=settings.bn > 0,
            observation=context.observation,
            lr_guess=settings.local_lr,
        )

    def replayed(self, parameterization, images: torch.Tensor, labels: torch.Tensor):
        """The images and labels the simulator replays for candidates ``images`` (R, B, ...)
        while optimizing: the candidates themselves, unless an attack keeps more variables
        than images."""
        return self.expanded(parameterization, images, labels)

    def expanded(self, parameterization, images: torch.Tensor, labels: torch.Tensor):
        """Reconstructed ``images`` and ``labels`` (R, B, ...) laid out as the simulator replays
        them (e.g. one copy per local epoch); the default is no change."""
        return images, labels

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        """The optimization's stages, in order; the default optimizes free pixels.

        A generator function: code after a ``yield`` runs once that stage has finished, so a
        later stage can start from an earlier one's variables (e.g. GIAS's latent, then weights).
        """
        yield Stage(free_pixels(context), context.settings.iterations)

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        observation, batch_size = context.observation, context.batch_size
        settings, generator, device = context.settings, context.generator, context.device
        if settings.optimizer not in OPTIMIZERS:
            raise GradleakError(
                f"unknown optimizer {settings.optimizer!r}; choose one of {OPTIMIZERS}"
            )
        if settings.schedule not in SCHEDULES:
            raise GradleakError(
                f"unknown step-size schedule {settings.schedule!r}; choose one of {SCHEDULES}"
            )
        restarts, total = settings.restarts, settings.iterations
        strategy = resolve_strategy(settings.labels, observation)
        labels = None  # fixed labels are read on the CPU, before the model moves
        if strategy != "joint":
            labels = fixed_labels(strategy, observation, context.model, batch_size)
        model = context.model = context.model.to(device)
        simulator = self.simulator(context)
        describe_simulation(context, simulator)
        target = batchnorm_target(context, simulator) if settings.bn else []
        prior = _ImagePrior(settings, model, target)
        distance = GradientDistance(
            settings.distance,
            [observation.gradients[n].to(device) for n in simulator.names],
            settings.layer_weights,
            precise=settings.optimizer == "lbfgs",
        )
        if strategy == "joint":
            num_classes = model.config["num_classes"]
            label_logits = torch.randn(restarts, batch_size, num_classes, generator=generator)
            label_logits = label_logits.to(device).requires_grad_(True)
            extra_variables = [label_logits]
        else:
            label_logits, extra_variables = None, []
            labels = labels.to(device).expand(restarts, batch_size)
        log_lr = None
        if simulator.learns_lr and settings.learn_lr:
            log_lr = torch.full((restarts,), math.log(settings.local_lr), device=device)
            log_lr.requires_grad_(True)
            extra_variables = [*extra_variables, log_lr]

        best = _BestIterates(restarts, device)
        frames: list[torch.Tensor] = []
        frame_steps: list[int] = []
        history: list[float] = []
        frame_every = max(1, total // MAX_FRAMES)
        done = 0
        keeper = _KEEPER.get()
        start = kept = time.perf_counter()
        interrupts = StepInterrupts() if keeper is not None else contextlib.nullcontext()
        with interrupts:
            for stage in self.stages(context):
                parameterization = stage.parameterization

                def objective(parameterization=parameterization) -> torch.Tensor:
                    images = parameterization.images()
                    candidate_labels = label_logits if label_logits is not None else labels
                    lr = None if log_lr is None else log_lr.exp()
                    gradients, statistics = simulator.simulate(
                        *self.replayed(parameterization, images, candidate_labels), lr
                    )
                    dist = distance(gradients)
                    total_objective = dist + prior(images, statistics)
                    if hasattr(parameterization, "penalty"):  # e.g. GIAS's regularizer (R,)
                        total_objective = total_objective + parameterization.penalty()
                    best.update(total_objective, dist, images, candidate_labels)
                    return total_objective

                stage_settings = dataclasses.replace(
                    settings,
                    iterations=stage.iterations,
                    lr=settings.lr if stage.lr is None else stage.lr,
                )
                variables = [*parameterization.parameters(), *extra_variables]
                step = make_step(stage_settings, variables, objective, parameterization)
                stale, best_seen = 0, float("inf")
                for it in range(stage.iterations):
                    if prior.group is not None and it and it % settings.group_every == 0:
                        prior.group.register(parameterization.images().detach())
                    value = step(it)
                    done += 1
                    current = float(best.distance.min())
                    history.append(current)
                    if done % frame_every == 0 or done == 1:
                        frames.append(best.images[best.best_restart()].clamp(0, 1).clone())
                        frame_steps.append(done - 1)
                    context.progress(done, total, current)
                    if keeper is not None:
                        stop = interrupts.pending
                        if stop or time.perf_counter() - kept >= keeper[1]:
                            keeper[0](best.so_far(self.name, done, total, start, stop))
                            kept = time.perf_counter()
                        if stop:
                            interrupts.stop()
                    if not torch.isfinite(value):
                        break
                    total_best = float(best.objective.min())
                    if total_best < best_seen * (1 - 1e-6):
                        best_seen, stale = total_best, 0
                    else:
                        stale += 1
                    if settings.patience is not None and stale >= settings.patience:
                        break
        if best.images is None:
            raise GradleakError(f"attack '{self.name}' ran no optimization step")
        if not frame_steps or frame_steps[-1] != done - 1:
            frames.append(best.images[best.best_restart()].clamp(0, 1).clone())
            frame_steps.append(done - 1)

        keep = best.best_restart()
        if log_lr is not None:
            context.notes["estimated_lr"] = float(log_lr[keep].detach().exp())
        if label_logits is not None:
            final_labels = best.labels[keep].argmax(-1)
            if settings.refine_labels:
                final_labels = _refined(
                    simulator,
                    distance,
                    lambda x, y, p=parameterization: self.expanded(p, x, y),
                    best.images[keep],
                    final_labels,
                    None if log_lr is None else log_lr[keep : keep + 1].detach().exp(),
                )
        else:
            final_labels = best.labels[keep].clone()
        return Reconstruction(
            images=best.images[keep].clamp(0, 1),
            labels=final_labels.long(),
            attack=self.name,
            gradient_distance=float(best.distance[keep]),
            restart_distances=[float(d) for d in best.distance],
            history=history,
            frames=frames,
            frame_steps=frame_steps,
            iterations=done,
        )


def _refined(simulator, distance, expand, images, labels, lr) -> torch.Tensor:
    """``labels`` (B,) of the kept restart refined on the distance of its ``images``;
    ``expand`` lays a (1, B, ...) batch out as the simulator replays it."""

    def distance_of(candidate: torch.Tensor) -> float:
        with torch.no_grad():
            replayed, _ = simulator.simulate(*expand(images[None].detach(), candidate[None]), lr)
            return float(distance(replayed)[0])

    num_classes = simulator.model.config["num_classes"]
    return refine_labels(distance_of, labels, num_classes).to(labels.device)


def describe_simulation(context: AttackContext, simulator: ClientSimulator) -> None:
    """Record in the run's notes what the simulator replays: the observation, how it treats
    several clients, and what it assumed for hidden local-training facts."""
    observation = context.observation
    if observation.kind == "gradient" and observation.clients == 1:
        return
    context.notes["observed"] = observation.describe()
    if observation.clients > 1:
        context.notes["clients"] = simulator.treatment
    if simulator.assumed:
        context.notes["assumed"] = dict(simulator.assumed)


class _ImagePrior:
    """The weighted sum of the enabled image priors, one value per restart."""

    def __init__(self, settings: MatchingSettings, model: ImageClassifier, running_statistics):
        self.settings = settings
        self.mean, self.std = model.mean, model.std
        self.running = running_statistics
        self.group = GroupConsistency() if settings.group else None

    def __call__(self, images: torch.Tensor, statistics) -> torch.Tensor:
        s = self.settings
        total = images.new_zeros(len(images))
        if s.tv or s.l2:
            normalized = (images - self.mean) / self.std  # the priors see what the model sees
            if s.tv:
                total = total + s.tv * total_variation(normalized)
            if s.l2:
                total = total + s.l2 * image_norm(normalized)
        if s.bn:
            total = total + s.bn * batchnorm_distance(statistics, self.running)
        if self.group is not None:
            total = total + s.group * self.group(images)
        return total


def make_step(settings: MatchingSettings, variables, objective, parameterization):
    """One optimizer step as a function ``step(iteration) -> summed objective``."""
    if settings.optimizer == "lbfgs":
        optimizer = torch.optim.LBFGS(
            variables,
            lr=settings.lr,
            max_iter=settings.lbfgs_inner,
            history_size=100,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
        )

        def closure():
            optimizer.zero_grad()
            loss = objective().sum()
            if torch.isfinite(loss):
                loss.backward(inputs=variables)
            return loss

        def lbfgs_step(_iteration: int) -> torch.Tensor:
            loss = optimizer.step(closure)
            parameterization.project_()
            return loss.detach()

        return lbfgs_step

    optimizer = torch.optim.Adam(variables, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _step_size_factor(settings))

    def adam_step(_iteration: int) -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective().sum()
        loss.backward(inputs=variables)
        if settings.signed:
            for v in variables:
                v.grad.sign_()
        optimizer.step()
        schedule.step()
        parameterization.project_()
        return loss.detach()

    return adam_step


def _step_size_factor(settings: MatchingSettings):
    """The multiplier of Adam's step size at each step: linear warm-up, then the schedule."""
    total, warmup = settings.iterations, settings.warmup
    milestones = [int(total * f) for f in (3 / 8, 5 / 8, 7 / 8)]

    def factor(step: int) -> float:
        scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
        if settings.schedule == "step":
            scale *= 0.1 ** sum(step >= m for m in milestones)
        elif settings.schedule == "cosine":
            scale *= 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        return scale

    return factor
