"""Training the attacker's own networks: resumable loop, checkpoints, artifacts with cards."""

from gradleak.learning.artifacts import card_path, load_artifact, read_card, save_artifact
from gradleak.learning.trainer import (
    default_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_generator,
    train,
)

__all__ = [
    "card_path",
    "default_checkpoint",
    "load_artifact",
    "load_checkpoint",
    "read_card",
    "save_artifact",
    "save_checkpoint",
    "step_generator",
    "train",
]
