"""Generative priors: a DCGAN generator trained on the attacker's auxiliary images.

Train once with :func:`train_generator` (resumable, saved as a ``"generator"`` artifact), then
hand the file to the generative attacks (``gias``, ``gifd``) as ``prior=``.
"""

from gradleak.generative.dcgan import Discriminator, Generator
from gradleak.generative.training import load_generator, train_generator

__all__ = [
    "Discriminator",
    "Generator",
    "load_generator",
    "train_generator",
]
