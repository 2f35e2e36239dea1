"""A grid of cases: the cross product of models, batches, defenses, seeds and methods.

A :class:`Grid` is the settings of an experiment and, called, its cases: the reference
write-up's presets are grids, the studies assemble several, and ``gradleak sweep`` reads one from
a TOML file. Private batches are formed from the images in order (:func:`make_batches`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from gradleak.errors import GradleakError
from gradleak.experiments.spec import (
    AttackSpec,
    Case,
    DefenseSpec,
    ImagesSpec,
    Method,
    ModelSpec,
    ObservationSpec,
)

COMPOSITIONS = ("single", "distinct", "repeated", "random")


@dataclass(frozen=True)
class Grid:
    """An experiment's settings as axes; ``grid()`` yields its cases.

    Attributes:
        data: the private images (a :func:`gradleak.data.load_images` spec; ``--images``).
        models: the models attacked (their seeds are replaced by each seed of ``seeds``).
        methods: the attack variants (or analyses) run on every observation.
        batches: ``(batch size, composition)`` pairs: ``single``, ``distinct`` (all labels
            different), ``repeated`` (all labels equal) or ``random`` (a seeded shuffle of the
            images cut into batches).
        defenses: each entry the defenses one observation gets (``()``: none).
        seeds: seeds of the model's initialization and of every attack.
        n_images: how many images form the batches (in order; ``--n-images``).
        image_size, channels, classes, one_per_class: which images and in what shape.
        knows_labels, knows_batch_size, bn_mode: the threat model.
        knows_bn_statistics: the server is given the batch's BatchNorm statistics (Huang et
            al.'s BN_exact; attacks use them with ``bn_statistics="exact"``).
        local, hidden_local, clients: FedAvg local training (items of
            :class:`gradleak.threat.LocalTraining`; empty: a gradient), the facts of it the
            server does not know, and the clients of a secure aggregate (each batch is split
            evenly over them).
        iterations, restarts: budget of iterative attacks that set none of their own
            (None: the attack's default; ``--iterations``, ``--restarts``).
        batch_size: replaces the size of every batch (``--batch-size``).
        max_batches: at most this many batches per (model, batch) pair.
        group: the summary group of a case, formatted with its ``variant``, ``batch_size``,
            ``composition``, ``model``, ``defense`` and ``seed`` (default: the axes that vary).
        name: prefix of the case ids (for experiments made of several grids).
        record: extra fields recorded with every case.
    """

    data: str
    models: tuple[ModelSpec, ...]
    methods: tuple[Method, ...]
    batches: tuple[tuple[int, str], ...] = ((1, "single"),)
    defenses: tuple[tuple[DefenseSpec, ...], ...] = ((),)
    seeds: tuple[int, ...] = (0,)
    n_images: int | None = 20
    image_size: int = 32
    channels: int = 3
    classes: tuple[int, ...] | None = None
    one_per_class: bool = False
    knows_labels: bool = True
    knows_batch_size: bool = True
    iterations: int | None = None
    restarts: int | None = None
    bn_mode: str = "train"
    knows_bn_statistics: bool = False
    local: tuple[tuple[str, object], ...] = ()
    hidden_local: tuple[str, ...] = ()
    clients: int = 1
    batch_size: int | None = None
    max_batches: int | None = None
    name: str = ""
    group: str | None = None
    record: tuple[tuple[str, object], ...] = ()

    @property
    def images(self) -> ImagesSpec:
        return ImagesSpec(
            self.data,
            size=self.image_size,
            channels=self.channels,
            classes=self.classes,
            one_per_class=self.one_per_class,
            first=self.n_images,
        )

    def __call__(self, settings: Grid | None = None) -> Iterator[Case]:
        """The grid's cases (``settings``: the grid itself, as experiments call it)."""
        return grid_cases(self if settings is None else settings)


def grid_cases(grid: Grid) -> Iterator[Case]:
    """The cases of ``grid``: seeds, models, batches, defenses, then methods innermost."""
    from gradleak.experiments import build

    if grid.bn_mode not in ("train", "eval"):
        raise GradleakError(f"bn_mode must be 'train' or 'eval', got {grid.bn_mode!r}")
    if grid.local:
        from gradleak.threat import LOCAL_FACTS, LocalTraining

        LocalTraining.from_dict(dict(grid.local))  # a clear error before any case runs
        unknown = sorted(set(grid.hidden_local) - set(LOCAL_FACTS))
        if unknown:
            raise GradleakError(f"unknown local-training facts {unknown}; choose {LOCAL_FACTS}")
    elif grid.hidden_local:
        raise GradleakError("hidden_local facts apply to FedAvg updates: set local training")
    pool = build.images(grid.images)
    batches = _batches(grid)
    compositions = [c for _, c in batches]
    varying = {
        "seed": len(grid.seeds) > 1,
        "model": len(grid.models) > 1,
        "batch": len(batches) > 1,
        "defense": len(grid.defenses) > 1,
    }
    methods = [with_budget(m, grid.iterations, grid.restarts) for m in grid.methods]
    for seed, model, (size, composition) in itertools.product(grid.seeds, grid.models, batches):
        model = dataclasses.replace(model, seed=seed)
        tag = composition if compositions.count(composition) == 1 else f"{composition}{size}"
        chosen = make_batches(pool.labels.tolist(), size, composition, seed=seed)
        for batch, defenses in itertools.product(chosen[: grid.max_batches], grid.defenses):
            ids = [pool.ids[i] for i in batch]
            defense = " + ".join(d.label for d in defenses) or "none"
            observation = ObservationSpec(
                model,
                grid.images,
                tuple(batch),
                knows_labels=grid.knows_labels,
                knows_batch_size=grid.knows_batch_size,
                bn_mode=grid.bn_mode,
                defenses=defenses,
                knows_bn_statistics=grid.knows_bn_statistics,
                local=grid.local,
                hidden_local=grid.hidden_local,
                clients=grid.clients,
            )
            prefix = [
                grid.name,
                f"seed{seed}" if varying["seed"] else "",
                model.name if varying["model"] else "",
                tag,
                defense if varying["defense"] else "",
                "+".join(ids),
            ]
            for method in methods:
                axes = {
                    "variant": method.variant,
                    "model": model.name,
                    "batch_size": size,
                    "composition": composition,
                    "defense": defense,
                    "seed": seed,
                }
                yield Case(
                    id="/".join(p for p in [*prefix, method.variant] if p),
                    observation=observation,
                    method=method,
                    seed=seed,
                    record={
                        **axes,
                        "attack": getattr(method, "attack", None),
                        "group": _group(grid, axes, varying),
                        "images": ids,
                        **dict(grid.record),
                    },
                )


def _batches(grid: Grid) -> list[tuple[int, str]]:
    pairs = []
    for size, composition in grid.batches:
        if composition not in COMPOSITIONS:
            raise GradleakError(f"unknown batch composition {composition!r}; use {COMPOSITIONS}")
        size = grid.batch_size or size
        if size < 1:
            raise GradleakError(f"batch size must be at least 1, got {size}")
        pair = (size, "single" if size == 1 and composition != "random" else composition)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


def with_budget(method: Method, iterations: int | None, restarts: int | None) -> Method:
    """An attack variant with this budget where it sets none and the attack iterates."""
    from gradleak.attacks import attack_class

    if not isinstance(method, AttackSpec) or not attack_class(method.attack).iterative():
        return method
    return dataclasses.replace(
        method,
        iterations=method.iterations or iterations,
        restarts=method.restarts or restarts,
    )


def _group(grid: Grid, axes: dict, varying: dict) -> str:
    if grid.group is not None:
        return grid.group.format(**axes)
    parts = [axes["variant"]]
    if varying["model"]:
        parts.append(axes["model"])
    if varying["batch"]:
        parts.append(f"{axes['composition']}, B={axes['batch_size']}")
    if varying["defense"]:
        parts.append(axes["defense"])
    return ", ".join(parts)


def make_batches(
    labels: list[int], batch_size: int, composition: str, *, seed: int = 0
) -> list[list[int]]:
    """Indices of private batches formed from images with ``labels``, in order.

    ``single``: one image per batch. ``distinct``: consecutive unused images with pairwise
    different labels. ``repeated``: unused images sharing one label, in order of appearance.
    ``random``: a shuffle seeded by ``seed``, cut into batches.
    """
    if composition not in COMPOSITIONS:
        raise GradleakError(f"unknown batch composition {composition!r}; use {COMPOSITIONS}")
    unused = list(range(len(labels)))
    if composition == "random":
        import torch

        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(labels), generator=generator).tolist()
        starts = range(0, len(order) - batch_size + 1, batch_size)
        return [order[i : i + batch_size] for i in starts]
    if composition == "single" or batch_size == 1:
        return [[i] for i in unused]
    batches: list[list[int]] = []
    while unused:
        first = unused[0]
        batch = [first]
        for j in unused[1:]:
            if len(batch) == batch_size:
                break
            same = labels[j] == labels[first]
            distinct_ok = all(labels[j] != labels[k] for k in batch)
            if (composition == "repeated" and same) or (composition == "distinct" and distinct_ok):
                batch.append(j)
        if len(batch) == batch_size:
            batches.append(batch)
            unused = [i for i in unused if i not in batch]
        else:
            unused.remove(first)
    return batches
