"""Learned inversion (Learning to Invert, Wu et al., UAI 2023): feature hashing of gradients and
an MLP trained on auxiliary data to map a fixed model's gradient to the client's batch."""

from gradleak.learned.hashing import FeatureHasher, flatten_gradients
from gradleak.learned.inverter import (
    GradientEncoder,
    Inverter,
    InverterNet,
    assignment_loss,
    cached_inverter,
    load_inverter,
)
from gradleak.learned.training import train_inverter
from gradleak.models.weights import model_fingerprint, weight_drift

__all__ = [
    "FeatureHasher",
    "GradientEncoder",
    "Inverter",
    "InverterNet",
    "assignment_loss",
    "cached_inverter",
    "flatten_gradients",
    "load_inverter",
    "model_fingerprint",
    "train_inverter",
    "weight_drift",
]
