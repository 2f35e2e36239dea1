"""Saving and strictly loading a model's weights as safetensors files."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gradleak.errors import GradleakError
from gradleak.models.wrapper import ImageClassifier

# Buffers that files may lack: the shared pretrained ResNet files were written without them.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def save_weights(
    model: ImageClassifier, path: str | os.PathLike, metadata: dict | None = None
) -> Path:
    """Write ``model.net.state_dict()`` to ``path`` with ``{"config": json(model.config)}``.

    Keys carry no ``net.`` prefix. Non-string ``metadata`` values are stored as JSON.
    """
    _check_model(model)
    header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    header["config"] = json.dumps(model.config)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)
    return path


def load_weights(model: ImageClassifier, path: str | os.PathLike) -> ImageClassifier:
    """Load a safetensors file into ``model.net`` strictly (only ``num_batches_tracked`` may be
    missing) and return ``model``; any mismatch raises :class:`GradleakError`."""
    _check_model(model)
    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"weights file {path} does not exist")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise GradleakError(f"{path} is not a valid safetensors file ({err})") from None
    expected = model.net.state_dict()
    missing = [k for k in expected if k not in tensors and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = [
        f"{what} {_first(keys)}"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatch", mismatched),
        )
        if keys
    ]
    if problems:
        raise GradleakError(
            f"{path} does not fit model {model.config.get('name')}: {'; '.join(problems)}"
        )
    model.net.load_state_dict(tensors, strict=False)
    return model


def _check_model(model) -> None:
    if not isinstance(model, ImageClassifier):
        raise GradleakError(f"expected an ImageClassifier, got {type(model).__name__}")


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def model_fingerprint(weights: dict[str, torch.Tensor]) -> str:
    """sha256 over the model's floating-point tensors (name and float32 bytes, sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = weights[name]
        if value.is_floating_point():
            digest.update(name.encode())
            digest.update(value.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def weight_norm(weights: dict[str, torch.Tensor]) -> float:
    """The l2 norm of all floating-point tensors of a state dict."""
    squares = (float(v.float().pow(2).sum()) for v in weights.values() if v.is_floating_point())
    return math.sqrt(sum(squares))


def weight_drift(observed: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> float:
    """``||w_obs - w_train|| / ||w_train||`` over the trained model's floating-point tensors."""
    squared = 0.0
    for name, value in trained.items():
        if value.is_floating_point() and name in observed:
            squared += float((observed[name].float() - value.float()).pow(2).sum())
    return math.sqrt(squared) / max(weight_norm(trained), 1e-30)


def read_model(path: str | os.PathLike) -> ImageClassifier:
    """The model a weights file written by :func:`save_weights` holds: rebuilt from the config
    it records (a registry model only: your own model's file names code, which is never
    imported from a file), then its weights loaded strictly."""
    from safetensors import safe_open

    from gradleak.models import custom
    from gradleak.models.registry import CONFIG_KEYS, build_model, planned_state

    path = Path(path)
    if not path.is_file():
        raise GradleakError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), "pt") as handle:
            config = json.loads((handle.metadata() or {}).get("config", "null"))
            stored = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RecursionError) as err:
        raise GradleakError(f"{path} is not a gradleak weights file ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise GradleakError(f"{path} records no model config: not a gradleak weights file")
    if custom.is_own_model(config["name"]):
        raise GradleakError(
            f"{path} holds your own model {config['name']}; build it in Python and use "
            "load_weights (a weights file is data, not code)"
        )
    unknown = sorted(str(k) for k in config if k not in CONFIG_KEYS)
    if unknown:
        raise GradleakError(f"{path}: its model config has unknown entries {_first(unknown)}")
    try:
        # sized on the meta device and matched to the stored tensors before it is built
        planned = planned_state(**config)
        mismatched = [
            f"{k} (file {stored.get(k)}, model {shape})"
            for k, shape in planned.items()
            if stored.get(k, shape) != shape
        ]
        if mismatched:
            raise GradleakError(
                f"its tensors do not fit model {config['name']}: {_first(mismatched)}"
            )
        model = build_model(**config)
    except GradleakError as err:
        raise GradleakError(f"{path}: {err}") from None
    except TypeError as err:
        raise GradleakError(f"{path}: cannot rebuild the model it records ({err})") from None
    return load_weights(model, path)
