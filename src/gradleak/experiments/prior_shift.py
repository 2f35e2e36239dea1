"""The ``prior-shift`` study: generative priors (GIAS, GIFD) when the attacker's auxiliary data
comes from the private data's distribution, from a shifted one, and no prior at all.

Private images: CIFAR-10 test images of a few classes (by default the vehicles: airplane,
automobile, ship, truck). Priors: DCGAN generators trained on auxiliary images that never include
the private ones (near-copies removed) — of the same classes (in-distribution), of the other
CIFAR-10 classes (shifted classes) and of another data set (Flowers-17: shifted domain). Every
private batch (sizes 1 and 4) is attacked by GIAS and GIFD with each prior, by the data-free deep
image prior (``dip``) and by plain Inverting Gradients (``ig``), each with the same budget, and
by Inverting Gradients with its own longer budget (``ig_iterations``) for reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import (
    ArtifactRef,
    ArtifactSpec,
    AttackSpec,
    Experiment,
    ImagesSpec,
    ModelSpec,
)

VEHICLES = (0, 1, 8, 9)
ANIMALS = (2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class PriorSpec:
    """One generative prior of the study: a name, its auxiliary data and classes."""

    name: str
    data: str
    classes: tuple[int, ...] | None = None

    @property
    def artifact(self) -> str:
        return "prior-" + self.name.replace(" ", "-")


@dataclass(frozen=True)
class PriorShiftSettings:
    """Everything that determines the study's results (recorded in ``results.json``)."""

    model: str = "lenet"
    data: str = "cifar10"
    private_classes: tuple[int, ...] = VEHICLES
    n_images: int = 8
    priors: tuple[PriorSpec, ...] = (
        PriorSpec("in-distribution", "cifar10:aux", VEHICLES),
        PriorSpec("other classes", "cifar10:aux", ANIMALS),
        PriorSpec("other dataset", "flowers17"),
    )
    prior_steps: int = 3000
    batch_sizes: tuple[int, ...] = (1, 4)
    iterations: int = 1000
    ig_iterations: int | None = 2000
    restarts: int = 1
    seed: int = 0

    @property
    def private(self) -> ImagesSpec:
        return ImagesSpec(self.data, classes=self.private_classes, first=self.n_images)


def artifacts(s: PriorShiftSettings) -> list[ArtifactSpec]:
    """One DCGAN prior per :class:`PriorSpec`, on auxiliary images without the private ones."""
    return [
        ArtifactSpec(
            spec.artifact,
            "generator",
            ImagesSpec(spec.data, classes=spec.classes, exclude=s.private),
            steps=s.prior_steps,
            seed=s.seed,
            private=s.private,
        )
        for spec in s.priors
    ]


def cases(s: PriorShiftSettings):
    """Every private batch attacked by IG, DIP, IG with its own budget, GIAS and GIFD."""
    methods = [AttackSpec("ig", "inverting_gradients"), AttackSpec("dip", "dip")]
    if s.ig_iterations:  # Inverting Gradients with its own, longer budget, for reference
        steps = s.ig_iterations
        methods.append(AttackSpec(f"ig ({steps} steps)", "inverting_gradients", iterations=steps))
    for spec in s.priors:
        prior = (("prior", ArtifactRef(spec.artifact)),)
        methods += [AttackSpec(f"{m} ({spec.name})", m, prior) for m in ("gias", "gifd")]
    return grid_cases(
        Grid(
            s.data,
            (ModelSpec(s.model),),
            tuple(methods),
            batches=tuple((b, "single" if b == 1 else "distinct") for b in s.batch_sizes),
            seeds=(s.seed,),
            n_images=s.n_images,
            classes=s.private_classes,
            iterations=s.iterations,
            restarts=s.restarts,
            group="{variant}, B={batch_size}",
        )
    )


EXPERIMENT = Experiment(
    "prior-shift",
    "GIAS and GIFD with generative priors trained in-distribution, on other classes and another "
    "data set, vs the data-free DIP and Inverting Gradients (LeNet)",
    settings=PriorShiftSettings(),
    cases=cases,
    artifacts=artifacts,
)
