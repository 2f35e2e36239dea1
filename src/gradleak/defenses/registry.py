"""The defense registry: every defense is a function registered with its stage.

A defense acts on the client's side at one of three stages of its step (:mod:`.client`):

- ``"data"``: the images the client trains on (MixUp, InstaHide);
  ``fn(images, targets, client, *, ...) -> (images, targets, facts)``, targets being (B, C)
  class probabilities;
- ``"step"``: the way the client computes its gradient or update (DP-SGD through Opacus);
  ``fn(client, *, ...) -> (gradients, loss, facts)``;
- ``"update"``: what the client sends, after computing it (noise, clipping, pruning,
  quantization, Soteria); ``fn(gradients, client, *, ...) -> (gradients, facts)``.

A defense's parameters are its keyword-only arguments, with their defaults; ``facts`` are what it
measured or derived (e.g. DP's epsilon), recorded with the parameters in the observation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gradleak.errors import GradleakError
from gradleak.specs import KeywordFunction, parse_spec

STAGES = ("data", "step", "update")


@dataclass(frozen=True)
class Defense(KeywordFunction):
    """A registered defense: its name, stage, function, one-line summary and the optional extra
    it needs (``pip install "gradleak[EXTRA]"``)."""

    stage: str = "update"
    extra: str | None = None

    kind = "defense"

    def usage(self) -> str:
        extra = f" [needs gradleak[{self.extra}]]" if self.extra else ""
        return super().usage() + extra


DEFENSES: dict[str, Defense] = {}


def register_defense(name: str, stage: str, summary: str, extra: str | None = None):
    """Decorator: register ``fn`` as the defense ``name`` acting at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown defense stage {stage!r}; use one of {STAGES}")

    def register(fn: Callable) -> Callable:
        if name in DEFENSES:
            raise ValueError(f"defense {name!r} is registered twice")
        DEFENSES[name] = Defense(name, fn, summary, stage=stage, extra=extra)
        return fn

    return register


def get_defense(name: str) -> Defense:
    try:
        return DEFENSES[name]
    except KeyError:
        known = ", ".join(["none", *sorted(DEFENSES)])
        raise GradleakError(f"unknown defense {name!r}; choose one of: {known}") from None


def parse_defense(text: str) -> tuple[str, dict]:
    """``"NAME[:key=value,...]"`` as ``(name, params)``, checked against the registry (values
    become int, float, bool or stay strings)."""
    name, params = parse_spec(text, "a defense", "noise:sigma=0.01")
    defense = get_defense(name)
    return defense.name, defense.check(params)


def defenses_help() -> str:
    """Every defense, one per line, for --help."""
    return "\n".join(DEFENSES[name].usage() for name in sorted(DEFENSES))
