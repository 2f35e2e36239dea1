"""The malicious-server registry: model modifications by name, as ``--server imprint:bins=128``.

A modification is a function ``fn(model, context, *, params...) -> ImageClassifier``: it returns
the model the server sends instead of ``model``. Its config records ``server`` (the
modification's name, parameters and the secrets its attack reads), so that observations made on
it rebuild it (:func:`gradleak.models.build_model` takes ``server=``) and the attack registered
under ``attack`` knows what the server did. The client side never reads that record:
:mod:`gradleak.malicious.detection` looks at the weights only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.specs import KeywordFunction, parse_spec


@dataclass
class ServerContext:
    """What a modification may use besides its parameters.

    Attributes:
        generator: seeds every random choice (CPU).
        private: the client's images, (N, C, H, W) in [0, 1], when known to the caller: never
            used to build the modification, only to keep them out of the server's auxiliary
            data (:func:`gradleak.data.auxiliary.auxiliary_images`'s ``exclude``).
    """

    generator: torch.Generator = field(default_factory=torch.Generator)
    private: torch.Tensor | None = None


@dataclass(frozen=True)
class ServerModification(KeywordFunction):
    """A registered modification: name, function, one-line summary, and the attack that
    exploits it."""

    attack: str = ""

    kind = "server modification"


SERVERS: dict[str, ServerModification] = {}


def register_server(name: str, summary: str, attack: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the server modification ``name``."""

    def register(fn: Callable) -> Callable:
        if name in SERVERS:
            raise ValueError(f"server modification {name!r} is registered twice")
        SERVERS[name] = ServerModification(name, fn, summary, attack=attack)
        return fn

    return register


def get_server(name: str) -> ServerModification:
    try:
        return SERVERS[name]
    except KeyError:
        known = ", ".join(["honest", *sorted(SERVERS)])
        raise GradleakError(f"unknown server {name!r}; choose one of: {known}") from None


def parse_server(text: str) -> tuple[str, dict] | None:
    """``"NAME[:key=value,...]"`` as ``(name, params)`` checked against the registry; None for
    ``"honest"`` (the model is sent unchanged)."""
    name, params = parse_spec(text, "a server", "imprint:bins=128")
    if name == "honest":
        if params:
            raise GradleakError("the honest server takes no parameters")
        return None
    server = get_server(name)
    return server.name, server.check(params)


def modify_model(
    model: ImageClassifier,
    server: str | tuple[str, dict],
    *,
    seed: int = 0,
    private: torch.Tensor | None = None,
) -> ImageClassifier:
    """The model a malicious server sends instead of ``model`` (``model`` is left unchanged).

    Args:
        server: ``"imprint:bins=128"`` or ``("imprint", {"bins": 128})``; ``"honest"`` returns
            ``model`` itself.
        seed: seeds the modification's random choices.
        private: the client's images, only to keep them out of the server's auxiliary data.
    """
    parsed = parse_server(server) if isinstance(server, str) else server
    if parsed is None:
        return model
    name, params = parsed
    modification = get_server(name)
    context = ServerContext(torch.Generator().manual_seed(seed), private)
    modified = modification.function(model, context, **modification.check(dict(params)))
    modified.config["server"] = {**modified.config["server"], "seed": seed}
    return modified


def servers_help() -> str:
    """Every modification, one per line, for --help."""
    return "\n".join(SERVERS[name].usage() for name in sorted(SERVERS))


def server_record(model_config: dict, name: str) -> dict | None:
    """The ``server`` record of a config when the modification ``name`` made it, else None."""
    record = model_config.get("server")
    return record if isinstance(record, dict) and record.get("name") == name else None
