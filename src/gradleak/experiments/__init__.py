"""Experiment presets (the reference write-up's experiments) and the runner."""

from gradleak.experiments.presets import (
    PRESETS,
    Preset,
    SweepPreset,
    Variant,
    get_preset,
    list_presets,
)
from gradleak.experiments.runner import attack_and_report, make_batches, run_preset

__all__ = [
    "PRESETS",
    "Preset",
    "SweepPreset",
    "Variant",
    "attack_and_report",
    "get_preset",
    "list_presets",
    "make_batches",
    "run_preset",
]
