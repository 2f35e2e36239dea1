"""``gradleak audit AUDIT.toml --out DIR``: which defense, at what cost in accuracy, stops the
attacks on a user's setup, written up as one self-contained ``DIR/report.html``.

An audit file is a sweep file (:mod:`~gradleak.experiments.sweep`: the model, the client's
images and batch size, local training, the defenses to compare and the attacks to try, with
their budgets) plus two tables::

    [utility]                 # what each defense costs: train with it, test on held-out images
    train = "cifar10:aux"     # the training images (near-copies of the private ones removed)
    held_out = 500            # test images held out of them
    n_train = 5000            # at most this many training images
    steps = 300               # server steps on client batches defended like the observed one
    batch_size = 32           # (and lr, optimizer, momentum, seed: gradleak.defenses.utility)
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
    LabelsSpec,
    RunOptions,
)
from gradleak.experiments.sweep import read_toml, sweep_experiment

#: The analyses every audit adds to the attacks: labels read off the gradient, batch size inferred.
LABELS_VARIANT = "labels recovered"
BATCH_SIZE_VARIANT = "batch size inferred"
BASELINES = ("mean_image", "gray")  # no-information references, best first
UTILITY_KEYS = {
    "train": str, "held_out": int, "n_train": int, "enabled": bool, "steps": int,
    "batch_size": int, "lr": float, "optimizer": str, "momentum": float, "seed": int,
    "partners": int,
}  # fmt: skip
BUDGET_KEYS = ("steps", "batch_size", "lr", "optimizer", "momentum", "seed", "partners")
AUDIT_KEYS = {"title": str, "margin_db": float}


@dataclass(frozen=True)
class UtilitySettings:
    """How each defense's accuracy is measured (:mod:`gradleak.defenses.utility`): training on
    ``train`` (at most ``n_train`` images) minus ``held_out`` test images, with the
    :class:`~gradleak.defenses.utility.UtilityBudget` fields given in ``budget`` (the others
    keep their defaults)."""

    train: str = "cifar10:aux"
    held_out: int = 500
    n_train: int | None = None
    budget: tuple = ()
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
    budget = tuple((k, utility.pop(k)) for k in BUDGET_KEYS if k in utility)
    settings = UtilitySettings(**utility, budget=budget)
    _budget(settings, grid.bn_mode, f"{path} [utility]")
    if settings.held_out < 1 or (settings.n_train is not None and settings.n_train < 1):
        raise GradleakError(f"{path} [utility] held_out and n_train must be at least 1")
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
    from gradleak.defenses.utility import UtilityStore, utility_split
    from gradleak.experiments import build

    settings = audit.utility
    private = grid.images
    train, test = utility_split(
        grid.data,
        source=settings.train,
        n_train=settings.n_train,
        n_test=settings.held_out,
        size=private.size,
        channels=private.channels,
    )
    budget = _budget(settings, grid.bn_mode, "[utility]")
    store = UtilityStore(out / "utility.json")
    model = build.model(dataclasses.replace(grid.models[0], seed=grid.seeds[0]), private)
    measured = {}
    for defenses in grid.defenses:
        label = " + ".join(d.label for d in defenses) or "none"
        if progress is not None:
            progress.note(f"accuracy with defense {label}: {budget.steps} training steps")
        measured[label] = store.accuracy(
            model, train, test, [(d.name, dict(d.params)) for d in defenses], budget
        )
    return measured


def _budget(settings: UtilitySettings, bn_mode: str, where: str):
    from gradleak.defenses.utility import UtilityBudget

    try:
        return UtilityBudget(**dict(settings.budget), bn_mode=bn_mode).check()
    except GradleakError as err:
        raise GradleakError(f"{where}: {err}") from None


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
