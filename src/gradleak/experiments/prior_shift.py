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
from pathlib import Path

import torch

from gradleak.data import load_images
from gradleak.data.auxiliary import auxiliary_images
from gradleak.experiments.runner import make_batches
from gradleak.experiments.study import ProgressFactory, Study
from gradleak.models import build_model
from gradleak.threat import observe

PRESET = "prior-shift"
VEHICLES = (0, 1, 8, 9)
ANIMALS = (2, 3, 4, 5, 6, 7)


@dataclass(frozen=True)
class PriorSpec:
    """One generative prior of the study: a name, its auxiliary data and classes."""

    name: str
    data: str
    classes: tuple[int, ...] | None = None


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


def run_prior_shift(
    out: str | Path,
    *,
    images: str | None = None,
    n_images: int | None = None,
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    settings: PriorShiftSettings | None = None,
) -> dict:
    """Run the study (see the module docstring); resumable; returns ``results.json``'s content."""
    from gradleak.generative import train_generator

    study = Study(
        out, PRESET, settings or PriorShiftSettings(), progress, images=images, n_images=n_images,
        iterations=iterations, restarts=restarts, seed=None if settings else seed,
    )  # fmt: skip
    s = study.settings
    pool = load_images(s.data)
    wanted = torch.isin(pool.labels, torch.tensor(s.private_classes))
    private = pool.subset(wanted).subset(slice(0, s.n_images))
    size = int(private.images.shape[-1])
    model = build_model(s.model, seed=s.seed, image_size=size)

    priors: dict[str, Path] = {}
    for spec in s.priors:
        data = auxiliary_images(spec.data, size=size, classes=spec.classes, exclude=private)
        card = {"data": str(data.source), "classes": spec.classes, "n_images": len(data)}

        def train(path: Path, data=data, card=card) -> None:
            train_generator(
                data.images, out=path, steps=s.prior_steps, size=size, seed=s.seed,
                private=private.images, card=card,
            )  # fmt: skip

        slug = spec.name.replace(" ", "-")
        priors[spec.name] = study.artifact(f"prior-{slug}", train, {"steps": s.prior_steps})

    variants = [("ig", "inverting_gradients", {}, s.iterations), ("dip", "dip", {}, s.iterations)]
    if s.ig_iterations:  # Inverting Gradients with its own, longer budget, for reference
        steps = s.ig_iterations
        variants.append((f"ig ({steps} steps)", "inverting_gradients", {}, steps))
    for name, path in priors.items():
        variants += [
            (f"{m} ({name})", m, {"prior": str(path)}, s.iterations) for m in ("gias", "gifd")
        ]

    for b in s.batch_sizes:
        for batch in make_batches(private, b, "single" if b == 1 else "distinct"):
            ids = "+".join(private.ids[i] for i in batch)
            observation = observe(model, private.images[batch], private.labels[batch])
            for variant, method, extra, steps in variants:
                study.attack(
                    f"B={b}/{ids}/{variant}",
                    observation,
                    method,
                    extra,
                    iterations=steps,
                    restarts=s.restarts,
                    seed=s.seed,
                    record={"variant": variant, "group": f"{variant}, B={b}", "batch_size": b},
                )
    return study.finish()
