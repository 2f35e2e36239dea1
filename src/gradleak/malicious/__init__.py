"""Malicious servers: the model modifications that make a client's update leak its images.

The honest-but-curious server of :mod:`gradleak.threat` only reads what clients send. A malicious
server changes the model it sends (Fowl et al.'s imprint, Boenisch et al.'s trap weights, Wen et
al.'s fishing); the honest client trains it as usual. ``modify_model(model, "imprint:bins=128")``
returns the modified model, :func:`gradleak.threat.observe` simulates the client on it, and the
attack named by the modification reads the images back. :func:`detect_modifications` is the
client's side: it inspects a received model and names each modification it finds.
"""

from __future__ import annotations

# Importing a modification's module registers it.
from gradleak.malicious import fishing, imprint, trap  # noqa: F401
from gradleak.malicious.detection import Finding, detect_modifications
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

__all__ = [
    "SERVERS",
    "Finding",
    "ServerContext",
    "ServerModification",
    "detect_modifications",
    "get_server",
    "modify_model",
    "parse_server",
    "server_record",
    "servers_help",
]
