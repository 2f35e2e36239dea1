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

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from gradleak.errors import GradleakError

STAGES = ("data", "step", "update")


@dataclass(frozen=True)
class Defense:
    """A registered defense: its name, stage, function, one-line summary and the optional extra
    it needs (``pip install "gradleak[EXTRA]"``)."""

    name: str
    stage: str
    function: Callable
    summary: str
    extra: str | None = None

    @property
    def parameters(self) -> dict[str, object]:
        """The defense's parameters and their defaults (``inspect.Parameter.empty``: required)."""
        return {
            p.name: p.default
            for p in inspect.signature(self.function).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def check(self, params: dict) -> dict:
        """``params`` if the defense takes them all and lacks none; GradleakError otherwise."""
        accepted = self.parameters
        for key in params:
            if key not in accepted:
                takes = ", ".join(accepted) or "no parameters"
                raise GradleakError(
                    f"defense {self.name!r} has no parameter {key!r}; it takes {takes}"
                )
        missing = [
            k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params
        ]
        if missing:
            raise GradleakError(f"defense {self.name!r} needs {', '.join(missing)}")
        return params

    def usage(self) -> str:
        """``name:key=default,...  summary`` for --help."""
        shown = [
            k if v is inspect.Parameter.empty else f"{k}={v}" for k, v in self.parameters.items()
        ]
        head = self.name + (":" + ",".join(shown) if shown else "")
        extra = f" [needs gradleak[{self.extra}]]" if self.extra else ""
        return f"{head}  {self.summary}{extra}"


DEFENSES: dict[str, Defense] = {}


def register_defense(name: str, stage: str, summary: str, extra: str | None = None):
    """Decorator: register ``fn`` as the defense ``name`` acting at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown defense stage {stage!r}; use one of {STAGES}")

    def register(fn: Callable) -> Callable:
        if name in DEFENSES:
            raise ValueError(f"defense {name!r} is registered twice")
        DEFENSES[name] = Defense(name, stage, fn, summary, extra)
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
    if not isinstance(text, str) or not text.strip():
        raise GradleakError(f"a defense is a string like 'noise:sigma=0.01', got {text!r}")
    name, _, rest = text.strip().partition(":")
    defense = get_defense(name.strip())
    params = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise GradleakError(f"defense {text!r}: expected key=value, got {pair!r}")
        params[key.strip()] = _value(value.strip())
    return defense.name, defense.check(params)


def defenses_help() -> str:
    """Every defense, one per line, for --help."""
    return "\n".join(DEFENSES[name].usage() for name in sorted(DEFENSES))


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
