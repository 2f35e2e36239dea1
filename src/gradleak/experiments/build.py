"""Specs made real: images, models, observations and trained artifacts, cached per process.

A worker that runs many cases of one experiment loads each image set and builds each model once
(:func:`images`, :func:`model`); FedAvg trajectories are extended, never recomputed
(:func:`model`). Artifacts are trained here when a run starts (:func:`artifact`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

from gradleak.data import ImageSet, load_images
from gradleak.data.auxiliary import auxiliary_images
from gradleak.errors import GradleakError
from gradleak.experiments.spec import (
    ArtifactRef,
    ArtifactSpec,
    ImagesSpec,
    ModelSpec,
    ObservationFile,
    ObservationSpec,
    Split,
)
from gradleak.learning import read_card
from gradleak.models import ImageClassifier, build_model
from gradleak.models.weights import weight_drift
from gradleak.threat import LocalTraining, Observation, load_observation, observe

AUXILIARY_HOLD_OUT = 1000


@functools.lru_cache(maxsize=16)
@functools.cache
def _notice_once(text: str) -> None:
    """Say ``text`` once per process (the CLI prints the ``gradleak`` logger's warnings)."""
    logging.getLogger("gradleak").warning(text)


def images(spec: ImagesSpec) -> ImageSet:
    """The images of ``spec``: loaded (near-copies of ``exclude`` removed), filtered by class,
    one per class, split, first N — in this order."""
    if spec.exclude is not None:
        data = auxiliary_images(
            spec.source,
            size=spec.size,
            channels=spec.channels,
            classes=spec.classes,
            exclude=images(spec.exclude),
        )
    else:
        data = load_images(spec.source, size=spec.size, channels=spec.channels)
        if spec.classes is not None:
            data = data.subset(torch.isin(data.labels, torch.tensor(spec.classes)))
            if len(data) == 0:
                raise GradleakError(f"{spec.source!r} has no image of classes {list(spec.classes)}")
    if spec.one_per_class:
        data = data.select(None, distinct_labels=True)
    if spec.split is not None:
        data = data.subset(split_indices(len(data), spec.split))
    if spec.first is not None:
        if spec.first > len(data):
            _notice_once(
                f"asked for {spec.first} images, {spec.source} has {len(data)}: using them"
            )
        data = data.subset(slice(0, min(spec.first, len(data))))
    if len(data) == 0:
        raise GradleakError(f"no images left in {spec.source!r} after filtering")
    return data


def split_indices(n: int, split: Split) -> torch.Tensor:
    """The indices of one part of a seeded random split of ``n`` items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split.seed))
    held_out = min(AUXILIARY_HOLD_OUT, n // 2) if split.held_out is None else split.held_out
    part = order[:held_out] if split.part == "held_out" else order[held_out:]
    return part.sort().values if split.sort else part


def num_classes(data: ImageSet) -> int:
    """The output layer a model needs for ``data``: ``max(10, classes, largest label + 1)``."""
    largest = int(data.labels.max()) + 1 if len(data) else 0
    return max(10, len(data.class_names), largest)


def model(spec: ModelSpec, data: ImagesSpec) -> ImageClassifier:
    """The model of ``spec`` for images shaped like ``data`` (after its FedAvg rounds)."""
    if spec.fedavg is None:
        return _model(spec, data)
    return _fedavg_trajectory(dataclasses.replace(spec, fedavg=None), data, spec.fedavg).at(
        spec.fedavg.rounds
    )


@functools.lru_cache(maxsize=16)
def _model(spec: ModelSpec, data: ImagesSpec) -> ImageClassifier:
    classes = spec.num_classes or num_classes(images(data))
    return build_model(
        spec.name,
        num_classes=classes,
        in_channels=data.channels,
        image_size=data.size,
        width=spec.width,
        weights=spec.weights,
        seed=spec.seed,
        mean=spec.mean,
        std=spec.std,
    )


class _Trajectory:
    """FedAvg rounds of one model on one data set, computed as far as asked and kept."""

    def __init__(self, base: ImageClassifier, data: ImageSet, fedavg):
        from gradleak.threat.fedavg import fedavg_rounds

        self.models = [base]
        self.rounds = fedavg_rounds(
            base, data.images, data.labels, rounds=10**9, lr=fedavg.lr, seed=fedavg.seed
        )

    def at(self, rounds: int) -> ImageClassifier:
        while len(self.models) <= rounds:
            self.models.append(next(self.rounds)[1])
        return self.models[rounds]


@functools.lru_cache(maxsize=4)
def _fedavg_trajectory(base: ModelSpec, data: ImagesSpec, fedavg) -> _Trajectory:
    return _Trajectory(_model(base, data), images(fedavg.images), fedavg)


@functools.lru_cache(maxsize=4)
def observation(spec: ObservationSpec | ObservationFile, seed: int) -> tuple[Observation, dict]:
    """The client step of ``spec`` (or the observation file) and facts about it for the
    results (``weight_drift`` of a model moved by FedAvg). Kept for the next cases: every
    method of a grid attacks the same observation, which is computed once (callers do not
    change it; attacks work on :meth:`Observation.attacker_view` copies)."""
    if isinstance(spec, ObservationFile):
        return _observation_file(spec), {}
    pool = images(spec.images)
    if max(spec.indices, default=-1) >= len(pool):
        raise GradleakError(f"image index {max(spec.indices)} beyond the {len(pool)} images")
    net = model(spec.model, spec.images)
    index = list(spec.indices)
    result = observe(
        net,
        pool.images[index],
        pool.labels[index],
        bn_mode=spec.bn_mode,
        knows_labels=spec.knows_labels,
        knows_batch_size=spec.knows_batch_size,
        knows_bn_statistics=spec.knows_bn_statistics,
        ids=[pool.ids[i] for i in index],
        metadata={"source": pool.source},
        local=LocalTraining.from_dict(dict(spec.local)) if spec.local else None,
        knows_local={fact: False for fact in spec.hidden_local} if spec.local else None,
        clients=spec.clients,
        defenses=[(d.name, _defense_params(d, seed, index)) for d in spec.defenses],
        partners=_partners(pool.images, index) if spec.defenses else None,
        partner_labels=_partners(pool.labels, index) if spec.defenses else None,
        defense_seed=seed * 1_000_003 + index[0],
    )
    facts: dict = {}
    if spec.model.fedavg is not None:
        base = _model(dataclasses.replace(spec.model, fedavg=None), spec.images)
        facts["weight_drift"] = weight_drift(net.net.state_dict(), base.net.state_dict())
    return result, facts


def _defense_params(defense, seed: int, index: list[int]) -> dict:
    """A defense's parameters; noise without a seed is seeded by the case (as it always was)."""
    params = dict(defense.params)
    if defense.name == "noise" and "seed" not in params:
        params["seed"] = seed * 1_000_003 + index[0]
    return params


def _partners(pool: torch.Tensor, batch: list[int]) -> torch.Tensor:
    """The client's other images (MixUp / InstaHide mix them in) or their labels: the pool
    without the batch."""
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[batch] = False
    return pool[keep]


@functools.lru_cache(maxsize=4)
def _observation_file(spec: ObservationFile) -> Observation:
    return load_observation(spec.path, model=spec.own_model)


def truth(spec: ObservationSpec | ObservationFile) -> torch.Tensor | None:
    """The private images of a case's observation (None: a file without its truth)."""
    if isinstance(spec, ObservationFile):
        known = _observation_file(spec).truth
        return None if known is None else known.images
    return images(spec.images).images[list(spec.indices)]


def observed_model(spec: ObservationSpec | ObservationFile) -> ImageClassifier:
    """The model a case's observation is made on (before any FedAvg rounds' effect matters:
    for sizing threads)."""
    if isinstance(spec, ObservationFile):
        return _observation_file(spec).build_model()
    return _model(dataclasses.replace(spec.model, fedavg=None), spec.images)


# ---------------------------------------------------------------------- artifacts
def artifact_path(root: Path, name: str) -> Path:
    return Path(root) / "artifacts" / f"{name}.safetensors"


def resolve(settings: tuple, root: Path) -> dict:
    """Attack settings with every :class:`ArtifactRef` replaced by its file under ``root``."""
    return {
        key: str(artifact_path(root, value.name)) if isinstance(value, ArtifactRef) else value
        for key, value in settings
    }


def artifact(spec: ArtifactSpec, root: Path, progress=None, device: str = "cpu") -> Path:
    """``root/artifacts/NAME.safetensors``, trained (on ``device``) unless a finished one with the
    same steps is there (training itself resumes from its checkpoints)."""
    path = artifact_path(root, spec.name)
    if path.exists() and read_card(path).get("steps") == spec.steps:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer = TRAINERS.get(spec.kind)
    if trainer is None:
        raise GradleakError(f"unknown artifact kind {spec.kind!r}; choose one of {list(TRAINERS)}")
    trainer(spec, path, progress, device)
    return path


def _train_generator(spec: ArtifactSpec, path: Path, progress, device: str = "cpu") -> None:
    from gradleak.generative import train_generator

    data = images(spec.images)
    private = images(spec.private).images if spec.private is not None else None
    train_generator(
        data.images,
        out=path,
        steps=spec.steps,
        size=spec.images.size,
        seed=spec.seed,
        private=private,
        progress=progress,
        card={"data": str(data.source), "classes": spec.images.classes, "n_images": len(data)},
        device=device,
        **dict(spec.options),
    )


def _train_inverter(spec: ArtifactSpec, path: Path, progress, device: str = "cpu") -> None:
    from gradleak.learned import train_inverter

    if spec.model is None:
        raise GradleakError(f"inverter artifact {spec.name!r} names no model")
    private = images(spec.private) if spec.private is not None else None
    train_inverter(
        model(spec.model, spec.images),
        images(spec.images),
        out=path,
        steps=spec.steps,
        seed=spec.seed,
        private=private,
        progress=progress,
        device=device,
        **dict(spec.options),
    )


TRAINERS = {"generator": _train_generator, "inverter": _train_inverter}
