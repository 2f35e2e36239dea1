"""Threat model: what the honest-but-curious server observes and knows."""

from gradleak.threat.local_training import LOCAL_FACTS, LocalTraining
from gradleak.threat.observation import (
    GroundTruth,
    Observation,
    load_observation,
    observe,
    save_observation,
    save_truth,
    truth_path,
)

__all__ = [
    "LOCAL_FACTS",
    "GroundTruth",
    "LocalTraining",
    "Observation",
    "load_observation",
    "observe",
    "save_observation",
    "save_truth",
    "truth_path",
]
