"""Where torch computes: ``--device auto|cpu|cuda|cuda:N|mps`` for every command.

``auto`` picks a CUDA GPU when torch sees one, else Apple's MPS when available, else the CPU;
without an accelerator it is the CPU, so results are the same as with ``cpu``. Seeded random
draws always come from CPU generators and are moved to the device afterwards, so a run starts
from the same numbers on every device. What a command returns or writes (reconstructions,
observations, trained networks) is on the CPU.
"""

from __future__ import annotations

import dataclasses

import torch

from gradleak.errors import GradleakError

DEVICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device: None is the CPU, ``"auto"`` the best one available
    (cuda, then mps, then cpu). GradleakError, naming the device, if torch cannot use it."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GradleakError(
            f"unknown device {device!r}; choose auto, cpu, cuda, cuda:1, ... or mps"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise GradleakError(f"device {device!r}: torch sees no CUDA device on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise GradleakError(f"device {device!r}: only {torch.cuda.device_count()} CUDA devices")
    if resolved.type == "mps" and not mps_available():
        raise GradleakError(f"device {device!r}: torch sees no MPS (Apple GPU) device here")
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise GradleakError(f"device {device!r}: gradleak runs on cpu, cuda or mps devices")
    return resolved


def device_name(device: torch.device) -> str:
    """A readable name: the GPU's model for CUDA, else the device type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return {"mps": "Apple GPU (MPS)"}.get(device.type, "CPU")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (before reading a clock); no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s first parameter (or buffer) lives; the CPU when it has none."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(value, device: torch.device | str):
    """``value`` with every tensor moved to ``device``: tensors, and the tensors inside dicts,
    lists, tuples and dataclasses (e.g. an :class:`~gradleak.threat.Observation` and its
    ground truth); other values are returned as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        moved = [to_device(v, device) for v in value]
        return type(value)(*moved) if hasattr(value, "_fields") else type(value)(moved)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: to_device(getattr(value, f.name), device)
            for f in dataclasses.fields(value)
            if f.init
        }
        return dataclasses.replace(value, **changes)
    return value
