"""``gradleak audit AUDIT.toml --out DIR``: which defense, at what cost in accuracy, stops the
attacks on a user's setup, written up as one self-contained ``DIR/report.html``.

An audit file is a sweep file (:mod:`~gradleak.experiments.sweep`: the model, the client's
images and batch size, local training, the defenses to compare and the attacks to try, with
their budgets) plus two tables::

    [utility]                 # what each defense costs: train with it, test on held-out images
    train = "cifar10:aux"     # the training images (near-copies of the private ones removed)
    held_out = 500            # test images held out of them
    steps = 300               # SGD steps of batch_size, lr (the same client step observe runs)
    batch_size = 32
    lr = 0.05
    [audit]
    title = "LeNet, batch 1"
    margin_db = 3.0           # a defense "stops" the attacks when none beats the baseline by more

The run is resumable: the attack cases, then the accuracy of every defense (``utility.json``),
then the report; a rerun skips what is finished.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gradleak.errors import GradleakError
from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import (
    BatchSizeSpec,
    Experiment,
    ImagesSpec,
    LabelsSpec,
    RunOptions,
    Split,
)
from gradleak.experiments.sweep import read_toml, sweep_experiment

#: The analyses every audit adds to the attacks: labels read off the gradient, batch size inferred.
LABELS_VARIANT = "labels recovered"
BATCH_SIZE_VARIANT = "batch size inferred"
BASELINES = ("mean_image", "gray")  # no-information references, best first
UTILITY_KEYS = {
    "train": str, "held_out": int, "steps": int, "batch_size": int, "lr": float,
    "momentum": float, "seed": int, "enabled": bool,
}  # fmt: skip
AUDIT_KEYS = {"title": str, "margin_db": float}


@dataclass(frozen=True)
class UtilitySettings:
    """How each defense's accuracy is measured: ``steps`` SGD steps of ``batch_size`` on
    ``train`` minus ``held_out`` images, tested on those held out (seeded)."""

    train: str = "cifar10:aux"
    held_out: int = 500
    steps: int = 300
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    seed: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class Audit:
    """An audit: the grid of attack cases (defenses x attacks x images), the utility
    measurement, the report's title and the margin (dB over the no-information baseline) from
    which an attack counts as leaking."""

    grid: Grid
    utility: UtilitySettings
    title: str
    margin_db: float = 3.0
    source: str = ""  # the audit file's text, shown in the report


def load_audit(path: str | Path) -> Audit:
    """The audit a TOML file describes (see the module docstring); every mistake is one
    GradleakError naming the key."""
    path = Path(path)
    data = read_toml(path, "audit")
    utility = _table(data.pop("utility", {}), UTILITY_KEYS, f"{path} [utility]")
    report = _table(data.pop("audit", {}), AUDIT_KEYS, f"{path} [audit]")
    experiment = sweep_experiment(data, path)
    grid: Grid = experiment.settings
    methods = (
        *grid.methods,
        LabelsSpec(LABELS_VARIANT, "auto"),
        BatchSizeSpec(BATCH_SIZE_VARIANT),
    )
    settings = UtilitySettings(**utility)
    for key in ("held_out", "steps", "batch_size"):
        if getattr(settings, key) < 1:
            raise GradleakError(f"{path} [utility] {key} must be at least 1")
    return Audit(
        dataclasses.replace(grid, methods=methods),
        settings,
        title=report.get("title", path.stem),
        margin_db=float(report.get("margin_db", 3.0)),
        source=path.read_text(),
    )


def audit_experiment(audit: Audit) -> Experiment:
    """The attack cases of ``audit`` as an experiment (its settings are the grid, so that
    ``--images``, ``--n-images``, ``--iterations`` override them as in a sweep)."""
    return Experiment("audit", audit.title, settings=audit.grid, cases=grid_cases)


def run_audit(
    audit: Audit, out: str | Path, options: RunOptions | None = None, *, progress=None
) -> Path:
    """Run the audit into ``out``: the attack cases, each defense's accuracy, then
    ``out/report.html``; returns the report's path. Interrupted, what finished is kept."""
    from gradleak.experiments.runner import run_experiment
    from gradleak.report.audit import write_audit_report

    options = options or RunOptions()
    out = Path(out)
    results = run_experiment(audit_experiment(audit), out, options, progress=progress)
    grid = options.apply(audit.grid, "audit")
    accuracy = measure_utility(audit, grid, out, progress) if audit.utility.enabled else {}
    return write_audit_report(out, audit, grid, results, accuracy)


def measure_utility(audit: Audit, grid: Grid, out: Path, progress=None) -> dict[str, dict]:
    """The accuracy of the audit's model trained with each defense of the grid (one entry per
    defense label, ``"none"`` included), resumable in ``out/utility.json``."""
    from gradleak.defenses.utility import UtilityBudget, UtilityStore, defense_accuracy
    from gradleak.experiments import build

    settings = audit.utility
    private = grid.images
    pool = ImagesSpec(settings.train, size=private.size, channels=private.channels, exclude=private)
    train = build.images(
        dataclasses.replace(pool, split=Split(settings.seed, "rest", settings.held_out))
    )
    test = build.images(
        dataclasses.replace(pool, split=Split(settings.seed, "held_out", settings.held_out))
    )
    budget = UtilityBudget(
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        momentum=settings.momentum,
        seed=settings.seed,
        bn_mode=grid.bn_mode,
    )
    store = UtilityStore(out / "utility.json")
    model_spec = dataclasses.replace(grid.models[0], seed=grid.seeds[0])
    model = build.model(model_spec, private)
    measured = {}
    for defenses in grid.defenses:
        label = " + ".join(d.label for d in defenses) or "none"
        if progress is not None:
            progress.note(f"accuracy with defense {label}: training {settings.steps} steps")
        measured[label] = defense_accuracy(
            model,
            train,
            test,
            [(d.name, dict(d.params)) for d in defenses],
            budget,
            store=store,
            key_extra={"model": dataclasses.asdict(model_spec), "data": settings.train},
        )
    return measured


def _table(table, keys: dict, where: str) -> dict:
    if not isinstance(table, dict):
        raise GradleakError(f"{where} must be a table")
    for key, value in table.items():
        if key not in keys:
            raise GradleakError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(keys))}")
        kind = keys[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            table[key] = value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GradleakError(f"{where} {key} must be a {kind.__name__}")
    return table


__all__ = ["Audit", "UtilitySettings", "audit_experiment", "load_audit", "run_audit"]
