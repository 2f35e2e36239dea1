"""``NAME[:key=value,...]`` specs, as the CLI takes defenses (``--defense dp:noise_multiplier=1``)
and malicious servers (``--server imprint:bins=128``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from gradleak.errors import GradleakError


def parse_spec(text: str, what: str, example: str) -> tuple[str, dict]:
    """``"NAME[:key=value,...]"`` as ``(name, params)``; values become int, float, bool or stay
    strings. ``what`` names the kind of spec in errors (``"a defense"``), ``example`` shows one."""
    if not isinstance(text, str) or not text.strip():
        raise GradleakError(f"{what} is a string like {example!r}, got {text!r}")
    name, _, rest = text.strip().partition(":")
    params = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise GradleakError(f"{what} {text!r}: expected key=value, got {pair!r}")
        params[key.strip()] = spec_value(value.strip())
    return name.strip(), params


def spec_value(text: str):
    """``"true"``/``"false"`` as bool, else int, else float, else the string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


@dataclass(frozen=True)
class KeywordFunction:
    """A registered function whose keyword-only arguments, with their defaults, are its
    parameters (a defense, a server modification): checked against a spec, shown in --help."""

    name: str
    function: Callable
    summary: str

    #: What the function is, in messages ("defense").
    kind = "function"

    @property
    def parameters(self) -> dict[str, object]:
        """The parameters and their defaults (``inspect.Parameter.empty``: required)."""
        return {
            p.name: p.default
            for p in inspect.signature(self.function).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def check(self, params: dict) -> dict:
        """``params`` if the function takes them all and lacks none; GradleakError otherwise."""
        accepted = self.parameters
        for key in params:
            if key not in accepted:
                takes = ", ".join(accepted) or "no parameters"
                raise GradleakError(
                    f"{self.kind} {self.name!r} has no parameter {key!r}; it takes {takes}"
                )
        missing = [
            k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params
        ]
        if missing:
            raise GradleakError(f"{self.kind} {self.name!r} needs {', '.join(missing)}")
        return params

    def usage(self) -> str:
        """``name:key=default,...  summary`` for --help."""
        shown = [
            k if v is inspect.Parameter.empty else f"{k}={v}" for k, v in self.parameters.items()
        ]
        return self.name + (":" + ",".join(shown) if shown else "") + f"  {self.summary}"
