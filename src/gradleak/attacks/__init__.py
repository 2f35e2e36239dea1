"""Attacks: one module per published attack, all called as ``attack(observation, ...)``."""

from __future__ import annotations

from gradleak.attacks.base import (
    Attack,
    Reconstruction,
    load_reconstruction,
    save_reconstruction,
)
from gradleak.attacks.bias import BiasAttack
from gradleak.attacks.dip import DeepImagePrior
from gradleak.attacks.dlg import DLG
from gradleak.attacks.fc_unmix import FCUnmix
from gradleak.attacks.gias import GIAS
from gradleak.attacks.gifd import GIFD
from gradleak.attacks.gradinversion import GradInversion
from gradleak.attacks.idlg import IDLG
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.learned_inversion import LearnedInversion
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings
from gradleak.attacks.rgap import RGAP
from gradleak.errors import GradleakError

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (
        DLG,
        IDLG,
        InvertingGradients,
        GradInversion,
        BiasAttack,
        RGAP,
        FCUnmix,
        GIAS,
        GIFD,
        DeepImagePrior,
        LearnedInversion,
    )
}


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


def get_attack(name: str, **settings) -> Attack:
    """The attack registered as ``name``, configured with ``settings``."""
    try:
        cls = ATTACKS[name]
    except KeyError:
        raise GradleakError(
            f"unknown attack method {name!r}; choose one of: {', '.join(list_attacks())}"
        ) from None
    return cls(**settings)


__all__ = [
    "ATTACKS",
    "DLG",
    "DeepImagePrior",
    "GIAS",
    "GIFD",
    "FCUnmix",
    "GradInversion",
    "IDLG",
    "Attack",
    "BiasAttack",
    "GradientMatchingAttack",
    "InvertingGradients",
    "LearnedInversion",
    "MatchingSettings",
    "RGAP",
    "Reconstruction",
    "get_attack",
    "load_reconstruction",
    "save_reconstruction",
    "list_attacks",
]
