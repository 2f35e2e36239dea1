"""Experiments as data, one runner.

An :class:`Experiment` is settings, the artifacts it trains and the cases it runs (every spec
is in :mod:`~gradleak.experiments.spec`); the reference write-up's presets are grids and studies
(:mod:`~gradleak.experiments.presets`), ``gradleak sweep`` reads a grid from TOML
(:mod:`~gradleak.experiments.sweep`), and :func:`run_experiment` runs any of them, resumably, in
this process, a process pool or on Ray.
"""

from gradleak.experiments.grid import Grid, make_batches
from gradleak.experiments.presets import PRESETS, get_preset, list_presets
from gradleak.experiments.spec import AttackSpec, Case, Experiment, ModelSpec, RunOptions


def run_experiment(*args, **kwargs):
    """:func:`gradleak.experiments.runner.run_experiment` (imported on first use: it needs
    torch, the experiments' definitions do not)."""
    from gradleak.experiments.runner import run_experiment as run

    return run(*args, **kwargs)


__all__ = [
    "PRESETS",
    "AttackSpec",
    "Case",
    "Experiment",
    "Grid",
    "ModelSpec",
    "RunOptions",
    "get_preset",
    "list_presets",
    "make_batches",
    "run_experiment",
]
