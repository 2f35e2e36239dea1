"""Threat model: what the honest-but-curious server observes and knows."""

from gradleak.threat.observation import (
    GroundTruth,
    Observation,
    load_observation,
    observe,
    save_observation,
    truth_path,
)

__all__ = [
    "GroundTruth",
    "Observation",
    "load_observation",
    "observe",
    "save_observation",
    "truth_path",
]
