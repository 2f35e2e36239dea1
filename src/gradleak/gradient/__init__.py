"""Reading the gradient: the layer below attacks and analyses.

What every attack and analysis reads off an observed gradient lives here: where a model's
gradient can be read (:mod:`~gradleak.gradient.structure`: output layer, first fully-connected
layer, feed-forward chains), closed-form readings of linear layers
(:mod:`~gradleak.gradient.linear`), labels with their counts
(:mod:`~gradleak.gradient.labels`), the batch size (:mod:`~gradleak.gradient.batch_size`) and the
attacker's replay of the client step (:mod:`~gradleak.gradient.simulation`). It imports only
``models`` and ``threat``; ``attacks`` and ``analysis`` import it.
"""

from gradleak.gradient.batch_size import estimate_batch_size, gradient_ranks
from gradleak.gradient.labels import LabelRecovery, idlg_label, recover_labels
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import (
    ImageLayer,
    Layer,
    feedforward_layers,
    image_layer,
    output_layer,
)

__all__ = [
    "ClientSimulator",
    "ImageLayer",
    "LabelRecovery",
    "Layer",
    "estimate_batch_size",
    "feedforward_layers",
    "gradient_ranks",
    "idlg_label",
    "image_layer",
    "output_layer",
    "recover_labels",
]
