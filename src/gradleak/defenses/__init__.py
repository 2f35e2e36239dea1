"""Defenses a client applies to its update before sending it, as transformations of observations.

Each defense takes an :class:`~gradleak.threat.Observation` and returns a new one whose gradients
are what the server then sees, with the defense appended to ``observation.defense["applied"]`` so
that results record it. Attacks need no change: they see the defended gradient.

- :func:`add_noise`: Gaussian noise on every gradient entry (DLG's noise defense; the noise step of
  DP-SGD when combined with :func:`clip`).
- :func:`clip`: scale the whole update to an l2 norm of at most ``max_norm`` (DP-SGD's clipping,
  applied to the client's update).
- :func:`prune`: keep the largest-magnitude fraction of each layer's entries, zero the rest
  (DLG's gradient pruning / "top-k sparsification").
"""

from __future__ import annotations

import dataclasses

import torch

from gradleak.errors import GradleakError
from gradleak.threat import Observation


def add_noise(observation: Observation, sigma: float, *, seed: int = 0) -> Observation:
    """Add i.i.d. N(0, sigma^2) noise to every gradient entry (seeded)."""
    if not sigma >= 0:
        raise GradleakError(f"noise sigma must be >= 0, got {sigma}")
    generator = torch.Generator().manual_seed(seed)
    gradients = {
        name: g + sigma * torch.randn(g.shape, generator=generator, dtype=g.dtype)
        for name, g in observation.gradients.items()
    }
    return _defended(observation, gradients, {"name": "noise", "sigma": sigma, "seed": seed})


def clip(observation: Observation, max_norm: float) -> Observation:
    """Scale the whole update so that its l2 norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise GradleakError(f"clipping norm must be > 0, got {max_norm}")
    norm = torch.sqrt(sum(g.double().pow(2).sum() for g in observation.gradients.values()))
    scale = min(1.0, max_norm / max(float(norm), 1e-30))
    gradients = {name: g * scale for name, g in observation.gradients.items()}
    return _defended(
        observation, gradients, {"name": "clip", "max_norm": max_norm, "norm": float(norm)}
    )


def prune(observation: Observation, keep: float) -> Observation:
    """Keep the ``keep`` fraction of largest-magnitude entries of every layer, zero the others."""
    if not 0 < keep <= 1:
        raise GradleakError(f"pruning keeps a fraction in (0, 1], got {keep}")
    gradients = {}
    for name, g in observation.gradients.items():
        flat = g.flatten()
        k = max(1, round(keep * flat.numel()))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.abs().topk(k).indices] = True
        gradients[name] = torch.where(mask, flat, torch.zeros_like(flat)).view_as(g)
    return _defended(observation, gradients, {"name": "prune", "keep": keep})


DEFENSES = {"noise": add_noise, "clip": clip, "prune": prune}


def apply_defense(observation: Observation, name: str, **parameters) -> Observation:
    """``observation`` after the defense registered as ``name`` (noise, clip, prune)."""
    try:
        defense = DEFENSES[name]
    except KeyError:
        raise GradleakError(
            f"unknown defense {name!r}; choose one of: {', '.join(sorted(DEFENSES))}"
        ) from None
    try:
        return defense(observation, **parameters)
    except TypeError as err:
        raise GradleakError(f"defense {name!r}: {err}") from None


def _defended(observation: Observation, gradients: dict, record: dict) -> Observation:
    applied = [*observation.defense.get("applied", []), record]
    return dataclasses.replace(
        observation, gradients=gradients, defense={**observation.defense, "applied": applied}
    )


__all__ = ["DEFENSES", "add_noise", "apply_defense", "clip", "prune"]
