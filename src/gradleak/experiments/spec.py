"""What an experiment is, as plain data: artifacts to train or load, then cases.

A :class:`Case` is one observation spec x one method (an attack variant with its budget, or a
label / batch-size analysis); an :class:`Experiment` names its settings, the artifacts its cases
use and a function from settings to cases. Everything here is frozen data that pickles (cases
travel to worker processes and Ray tasks) and imports no torch, so that ``gradleak list`` and
``--help`` stay fast; :mod:`gradleak.experiments.build` turns specs into images, models and
observations, and :mod:`gradleak.experiments.runner` runs cases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gradleak.errors import GradleakError


# ---------------------------------------------------------------------- images and models
@dataclass(frozen=True)
class Split:
    """A seeded random split of an image set: the first ``held_out`` of a permutation (in
    permutation order) or the rest (in permutation order, or sorted back with ``sort``).
    ``held_out=None`` holds out ``min(1000, N // 2)``."""

    seed: int
    part: str  # "held_out" | "rest"
    held_out: int | None = None
    sort: bool = False


@dataclass(frozen=True)
class ImagesSpec:
    """A set of real images, loaded, filtered and split in this order.

    Attributes:
        source: a :func:`gradleak.data.load_images` spec (or ``"cifar10:aux"``).
        size, channels: the images' shape.
        exclude: private images whose near-copies are removed (the attacker's auxiliary data
            never holds them; :func:`gradleak.data.auxiliary.auxiliary_images`).
        classes: keep these labels only.
        one_per_class: keep the first image of each label.
        split: keep one part of a seeded random split.
        first: keep the first ``first`` images.
    """

    source: str
    size: int = 32
    channels: int = 3
    exclude: ImagesSpec | None = None
    classes: tuple[int, ...] | None = None
    one_per_class: bool = False
    split: Split | None = None
    first: int | None = None


@dataclass(frozen=True)
class FedAvgSpec:
    """The model after ``rounds`` FedAvg rounds on ``images`` (:func:`gradleak.threat.fedavg`)."""

    images: ImagesSpec
    rounds: int
    lr: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """A registry model; ``num_classes=None`` sizes the output layer from the images
    (``max(10, classes, largest label + 1)``), the input follows the images' shape."""

    name: str
    seed: int = 0
    width: int | None = None
    weights: str | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    fedavg: FedAvgSpec | None = None


@dataclass(frozen=True)
class DefenseSpec:
    """A defense of :mod:`gradleak.defenses` with its parameters. A noise defense without a
    ``seed`` is seeded by the case (run seed and first image), so that cases differ."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        values = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params]
        return " ".join([self.name, ", ".join(values)]) if values else self.name


@dataclass(frozen=True)
class ObservationSpec:
    """One simulated client step: a model, the images at ``indices`` of ``images``, what the
    server knows, and the defenses the client applied (``knows_bn_statistics``: the server is
    given the batch's BatchNorm statistics, Huang et al.'s BN_exact). ``local`` (items of
    :class:`gradleak.threat.LocalTraining`) makes it a FedAvg update, ``hidden_local`` lists the
    facts of it the server does not know, ``clients`` > 1 a secure aggregate."""

    model: ModelSpec
    images: ImagesSpec
    indices: tuple[int, ...]
    knows_labels: bool = True
    knows_batch_size: bool = True
    bn_mode: str = "train"
    defenses: tuple[DefenseSpec, ...] = ()
    knows_bn_statistics: bool = False
    local: tuple[tuple[str, Any], ...] = ()
    hidden_local: tuple[str, ...] = ()
    clients: int = 1


@dataclass(frozen=True)
class ObservationFile:
    """An observation file written by ``gradleak observe`` (or any :func:`save_observation`);
    ``sha256`` of its content makes a replaced file a different case. ``own_model`` names your
    own model's factory again when the observation was made with one (a file never names code to
    import by itself)."""

    path: str
    sha256: str
    own_model: str | None = None

    @classmethod
    def of(cls, path, own_model: str | None = None) -> ObservationFile:
        from pathlib import Path

        from gradleak.threat.observation import check_observation_file

        file = Path(path)
        check_observation_file(file)  # missing, a folder, a FIFO: named, never opened
        return cls(str(file), hashlib.sha256(file.read_bytes()).hexdigest(), own_model)


# ---------------------------------------------------------------------- methods
@dataclass(frozen=True)
class ArtifactRef:
    """An artifact of the experiment, by name; resolved to its file when a case runs."""

    name: str


@dataclass(frozen=True)
class AttackSpec:
    """An attack variant: a registered attack, its settings (values may be
    :class:`ArtifactRef`\\ s), for iterative attacks the budget, and the attacker's guess of a
    batch size the threat model hides."""

    variant: str
    attack: str
    settings: tuple[tuple[str, Any], ...] = ()
    iterations: int | None = None
    restarts: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class LabelsSpec:
    """Batch label recovery (:mod:`gradleak.gradient.labels`): ``method`` is one of its methods
    or ``"auto"``; ``auxiliary`` images with labels feed the ``bias`` method's class
    probabilities; ``hide_batch_size`` makes the attacker estimate the batch size first."""

    variant: str
    method: str
    auxiliary: ImagesSpec | None = None
    hide_batch_size: bool = False


@dataclass(frozen=True)
class BatchSizeSpec:
    """Batch-size estimation: ``"analytic"`` (gradient ranks and label counts) or a learned
    inverter's batch-size head (``inverter``)."""

    variant: str
    inverter: ArtifactRef | None = None


Method = AttackSpec | LabelsSpec | BatchSizeSpec


@dataclass(frozen=True)
class Case:
    """One observation x one method, run with ``seed``; ``record`` holds the axis values the
    results keep (variant, group, batch size, ...)."""

    id: str
    observation: ObservationSpec | ObservationFile
    method: Method
    seed: int = 0
    record: dict = field(default_factory=dict, hash=False, compare=False)

    def key(self) -> str:
        """A digest of everything that determines the case's result."""
        return digest({"observation": self.observation, "method": self.method, "seed": self.seed})


@dataclass(frozen=True)
class ArtifactSpec:
    """A network the experiment trains once and caches as ``out/artifacts/NAME.safetensors``.

    Attributes:
        kind: ``"generator"`` (a DCGAN prior) or ``"inverter"`` (a learned inverter of
            ``model``'s gradients).
        images: the training images; ``private``: images training must not hold.
        steps: training steps; ``options``: the trainer's other arguments.
    """

    name: str
    kind: str
    images: ImagesSpec
    steps: int
    seed: int = 0
    model: ModelSpec | None = None
    private: ImagesSpec | None = None
    options: tuple[tuple[str, Any], ...] = ()


# ---------------------------------------------------------------------- experiments
@dataclass(frozen=True)
class RunOptions:
    """The user's overrides of one run, resolved once at the top (``gradleak run`` / ``sweep``
    options): the images, how many, the budget, the seed and batch size replace the
    experiment's settings of those names; threads, device, workers, backend and address say how
    cases run, not what they compute."""

    images: str | None = None
    n_images: int | None = None
    iterations: int | None = None
    restarts: int | None = None
    seed: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    device: str = "cpu"
    workers: int = 1
    backend: str = "local"
    address: str | None = None

    OVERRIDES = {
        "images": "data",
        "n_images": "n_images",
        "iterations": "iterations",
        "restarts": "restarts",
        "seed": "seed",
        "batch_size": "batch_size",
    }

    def apply(self, settings, experiment: str):
        """``settings`` with the overrides applied; GradleakError for an override the
        experiment has no setting for."""
        names = {f.name for f in dataclasses.fields(settings)}
        changes = {}
        for option, target in self.OVERRIDES.items():
            value = getattr(self, option)
            if value is None:
                continue
            if target == "seed" and "seeds" in names:  # a grid: one seed replaces its seeds
                target, value = "seeds", (value,)
            if target not in names:
                flag = "--" + option.replace("_", "-")
                raise GradleakError(f"{experiment} takes no {flag}")
            changes[target] = value
        return dataclasses.replace(settings, **changes)


@dataclass(frozen=True)
class Experiment:
    """An experiment: settings (a frozen dataclass; :class:`RunOptions` override some), the
    artifacts it trains and the cases it runs, both functions of the settings.

    ``summary`` and ``table`` optionally add experiment-specific results to ``results.json`` and
    replace the default Markdown table; both read the results dictionary only.
    """

    name: str
    description: str
    settings: Any
    cases: Callable[[Any], Iterable[Case]]
    artifacts: Callable[[Any], Iterable[ArtifactSpec]] = lambda settings: ()
    summary: Callable[[dict], dict] | None = None
    table: Callable[[dict], str] | None = None


def with_model(experiment: Experiment, model: str) -> Experiment:
    """``experiment`` on another registered model (same kind of weights): its grid's models or
    its ``model`` setting replaced (``gradleak run --model``)."""
    settings = experiment.settings
    names = {f.name for f in dataclasses.fields(settings)}
    if "models" in names:
        models = tuple(dataclasses.replace(m, name=model) for m in settings.models)
        settings = dataclasses.replace(settings, models=models)
    elif "model" in names:
        settings = dataclasses.replace(settings, model=model)
    else:
        raise GradleakError(f"{experiment.name} chooses its own models; drop --model")
    return dataclasses.replace(experiment, settings=settings)


def as_items(mapping: dict) -> tuple[tuple[str, Any], ...]:
    """A settings dict as a hashable, ordered tuple of pairs."""
    return tuple(sorted(mapping.items()))


def digest(value) -> str:
    """A short stable digest of a JSON-able value (dataclasses included)."""
    text = json.dumps(_plain(value), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"_type": type(value).__name__, **_plain(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
