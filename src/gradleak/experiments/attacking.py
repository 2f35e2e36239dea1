"""``gradleak attack``: one observation file, one attack or every registered attack.

With ``method="auto"`` every registered attack is a case; those that do not apply are skipped
with their reasons, and the one whose reconstruction best explains the observed gradient (the
cosine distance of :func:`gradleak.attacks.objectives.matching_distance`, never the truth) is
reported as ``best``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gradleak.errors import GradleakError
from gradleak.experiments.grid import with_budget
from gradleak.experiments.spec import AttackSpec, Case, Experiment, ObservationFile, as_items

AUTO = "auto"


@dataclass(frozen=True)
class AttackRunSettings:
    """One observation file and the attacks to run on it, with the run's budget, seed and the
    attacker's guess of a hidden batch size."""

    observation: ObservationFile
    methods: tuple[AttackSpec, ...]
    iterations: int | None = None
    restarts: int | None = None
    seed: int = 0
    batch_size: int | None = None


def attack_experiment(
    observation: str, method: str, settings: dict, model: str | None = None
) -> Experiment:
    """The experiment of ``gradleak attack OBSERVATION --method METHOD`` with attack settings
    ``settings``; for ``auto``, each setting goes to the attacks that have it. ``model`` names
    your own model's factory again when the observation was made with one.

    Raises:
        GradleakError: an unknown method, or a setting no chosen attack has.
    """
    from gradleak.attacks import attack_class, attacks_taking, list_attacks
    from gradleak.experiments import build

    names = list_attacks() if method == AUTO else [attack_class(method).name]
    methods = []
    for name in names:
        fields = attack_class(name).defaults.__dataclass_fields__
        own = {k: v for k, v in settings.items() if k in fields or method != AUTO}
        methods.append(AttackSpec(name, name, as_items(own)))
    for key in settings:
        takers = attacks_taking(key)
        if not any(m.attack in takers for m in methods):
            where = f"attack {method!r}" if method != AUTO else "any attack"
            hint = f" (attacks that take it: {', '.join(takers)})" if takers else ""
            raise GradleakError(f"{key!r} is not a setting of {where}{hint}")
    for spec in methods:
        attack_class(spec.attack)(**dict(spec.settings))  # settings are checked now, by name
    file = ObservationFile.of(observation, model)
    build.observation(file, 0)  # a file that is not a valid observation fails here, not later
    return Experiment(
        "attack",
        f"{method} on {observation}",
        settings=AttackRunSettings(file, tuple(methods)),
        cases=cases,
        summary=best,
    )


def cases(s: AttackRunSettings):
    for method in s.methods:
        method = with_budget(method, s.iterations, s.restarts)
        if s.batch_size is not None:
            method = dataclasses.replace(method, batch_size=s.batch_size)
        yield Case(
            method.variant,
            s.observation,
            method,
            seed=s.seed,
            record={"variant": method.variant, "attack": method.attack, "group": method.variant},
        )


def best(results: dict) -> dict:
    """``best``: the finished attack whose reconstruction's gradient is closest (cosine) to the
    observed one; None when no attack finished."""
    done = [c for c in results["cases"] if isinstance(c.get("cosine_distance"), float)]
    if not done:
        return {"best": None}
    chosen = min(done, key=lambda c: c["cosine_distance"])
    return {"best": {"attack": chosen["attack"], "cosine_distance": chosen["cosine_distance"]}}
