"""Malicious servers: the model modifications that make a client's update leak its images.

The honest-but-curious server of :mod:`gradleak.threat` only reads what clients send. A malicious
server changes the model it sends (Fowl et al.'s imprint, Boenisch et al.'s trap weights, Wen et
al.'s fishing); the honest client trains it as usual. ``modify_model(model, "imprint:bins=128")``
returns the modified model, :func:`gradleak.threat.observe` simulates the client on it, and the
attack of the same name reads the images back. :func:`detect_modifications` is the client's side:
it inspects a received model, weights only, and names each modification it finds.
"""

from __future__ import annotations

import importlib

from gradleak.malicious.registry import (
    SERVERS,
    ServerContext,
    ServerModification,
    get_server,
    modify_model,
    parse_server,
    server_record,
    servers_help,
)

for _module in ("imprint", "trap", "fishing"):  # importing registers the modification
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as _err:  # a modification still being written
        if _err.name != f"{__name__}.{_module}":
            raise

__all__ = [
    "SERVERS",
    "ServerContext",
    "ServerModification",
    "get_server",
    "modify_model",
    "parse_server",
    "server_record",
    "servers_help",
]
