"""Attacks: one module per published attack, all called as ``attack(observation, ...)``.

Every module of this package is imported here, and the attacks in it register themselves with
:func:`~gradleak.attacks.registry.register_attack`: adding an attack is adding its module. The
registered classes are exported by their class names (``from gradleak.attacks import DLG``).
"""

from __future__ import annotations

import importlib
import pkgutil

from gradleak.attacks.base import (
    Attack,
    AttackContext,
    Reconstruction,
    Requirement,
    load_reconstruction,
    requirement,
    save_reconstruction,
)
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings
from gradleak.attacks.registry import (
    ATTACKS,
    attack_class,
    attacks_taking,
    check_all,
    get_attack,
    list_attacks,
    register_attack,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

globals().update({cls.__name__: cls for cls in ATTACKS.values()})

__all__ = [  # the registered attack classes are added by name
    "ATTACKS",
    "Attack",
    "AttackContext",
    "GradientMatchingAttack",
    "MatchingSettings",
    "Reconstruction",
    "Requirement",
    "attack_class",
    "attacks_taking",
    "check_all",
    "get_attack",
    "list_attacks",
    "load_reconstruction",
    "register_attack",
    "requirement",
    "save_reconstruction",
    *sorted(cls.__name__ for cls in ATTACKS.values()),
]
