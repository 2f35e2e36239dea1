"""The attack registry: attacks register by name with :func:`register_attack`.

The CLI, ``gradleak analyze``, experiments and sweeps loop over this registry and ask each attack
what it needs (:meth:`Attack.check`); no attack is named outside its own module. Modules in
``gradleak/attacks/`` are imported, and so register, when the package is.
"""

from __future__ import annotations

from gradleak.attacks.base import Attack
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import Observation

ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make ``cls`` available as ``get_attack(cls.name)``."""
    if not cls.name or cls.name in ATTACKS:
        raise RuntimeError(f"attack {cls.__name__} needs a unique name, got {cls.name!r}")
    ATTACKS[cls.name] = cls
    return cls


def list_attacks() -> list[str]:
    return sorted(ATTACKS)


def attack_class(name: str) -> type[Attack]:
    """The attack class registered as ``name``."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise GradleakError(
            f"unknown attack method {name!r}; choose one of: {', '.join(list_attacks())}"
        ) from None


def get_attack(name: str, **settings) -> Attack:
    """The attack registered as ``name``, configured with ``settings``."""
    return attack_class(name)(**settings)


def attacks_taking(setting: str) -> list[str]:
    """Names of the attacks that have a setting called ``setting``."""
    return [n for n in list_attacks() if setting in ATTACKS[n].defaults.__dataclass_fields__]


def check_all(
    observation: Observation,
    *,
    batch_size: int | None = None,
    settings: dict[str, dict] | None = None,
    model: ImageClassifier | None = None,
) -> dict[str, tuple[Attack, list[str]]]:
    """Every registered attack (configured with ``settings[name]`` where given) and the reasons
    it does not apply to ``observation`` (empty: it applies)."""
    model = observation.attacker_view().build_model() if model is None else model
    out = {}
    for name in list_attacks():
        attack = get_attack(name, **(settings or {}).get(name, {}))
        out[name] = (attack, attack.check(observation, batch_size=batch_size, model=model))
    return out
