"""Trained artifacts (generative priors, learned inverters): safetensors weights + a JSON card.

The card says what the artifact is and how it was made (kind, architecture, data, classes, steps,
seed, versions). It is stored in the safetensors header, so the file is self-describing, and
copied to ``<file>.json`` beside it for people to read. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gradleak.errors import GradleakError
from gradleak.records import environment, json_safe

ARTIFACT_FORMAT = "gradleak.artifact/1"


def card_path(path: str | os.PathLike) -> Path:
    """The human-readable copy of an artifact's card: ``<file>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_artifact(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], card: dict, *, kind: str
) -> Path:
    """Write ``tensors`` to ``path`` (safetensors) with ``card`` (JSON) in its header and beside it.

    ``kind`` names what the artifact is (e.g. ``"generator"``, ``"inverter"``); loaders check it.
    Versions of the software are added to the card. The file is written atomically.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise GradleakError(f"artifact files end in .safetensors, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    card = json_safe({"format": ARTIFACT_FORMAT, "kind": kind, **card, "versions": environment()})
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(tmp),
        metadata={"gradleak": json.dumps(card)},
    )
    tmp.replace(path)
    card_path(path).write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_card(path: str | os.PathLike) -> dict:
    """The card stored in an artifact's header (no tensors are read)."""
    return _open(path, tensors=False)[1]


def load_artifact(path: str | os.PathLike, *, kind: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, card)`` of an artifact written by :func:`save_artifact` as ``kind``.

    Raises:
        GradleakError: the file is missing, not safetensors, not a gradleak artifact, or another
            kind of artifact.
    """
    tensors, card = _open(path, tensors=True)
    if card.get("kind") != kind:
        raise GradleakError(f"{path} holds a {card.get('kind')!r}, not a {kind!r}")
    return tensors, card


def _open(path: str | os.PathLike, *, tensors: bool) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"no such file: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            header = (handle.metadata() or {}).get("gradleak")
            data = {k: handle.get_tensor(k) for k in handle.keys()} if tensors else {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise GradleakError(f"{path} is not a valid safetensors file ({err})") from None
    try:
        card = json.loads(header) if header else {}
    except json.JSONDecodeError:
        card = {}
    if card.get("format") != ARTIFACT_FORMAT:
        raise GradleakError(f"{path} is not a gradleak artifact (no card in its header)")
    return data, card
