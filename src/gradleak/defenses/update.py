"""Defenses on what the client sends: Gaussian noise, clipping and pruning of its update."""

from __future__ import annotations

import torch

from gradleak.defenses.client import ClientBatch, Gradients
from gradleak.defenses.registry import register_defense
from gradleak.errors import GradleakError


@register_defense("noise", "update", "Gaussian noise N(0, sigma^2) on every entry (DLG Sec. 5)")
def noise(
    gradients: Gradients, client: ClientBatch, *, sigma: float, seed: int | None = None
) -> tuple[Gradients, dict]:
    """Add i.i.d. N(0, sigma^2) noise to every entry (seeded by ``seed``, else by the case)."""
    if not sigma >= 0:
        raise GradleakError(f"noise sigma must be >= 0, got {sigma}")
    generator = client.generator if seed is None else torch.Generator().manual_seed(seed)
    noisy = {
        name: g + sigma * torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
        for name, g in gradients.items()
    }
    return noisy, {}


@register_defense("clip", "update", "scale the whole update to l2 norm <= max_norm")
def clip(gradients: Gradients, client: ClientBatch, *, max_norm: float) -> tuple[Gradients, dict]:
    """Scale the whole update so that its l2 norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise GradleakError(f"clipping norm must be > 0, got {max_norm}")
    norm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in gradients.values())))
    scale = min(1.0, max_norm / max(norm, 1e-30))
    return {name: g * scale for name, g in gradients.items()}, {"norm": norm}


@register_defense("prune", "update", "keep the largest-magnitude fraction of each layer (DLG)")
def prune(gradients: Gradients, client: ClientBatch, *, keep: float) -> tuple[Gradients, dict]:
    """Keep the ``keep`` fraction of largest-magnitude entries of every layer, zero the others
    (DLG's gradient pruning, "top-k sparsification")."""
    if not 0 < keep <= 1:
        raise GradleakError(f"pruning keeps a fraction in (0, 1], got {keep}")
    pruned = {}
    for name, g in gradients.items():
        flat = g.flatten()
        k = max(1, round(keep * flat.numel()))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.abs().topk(k).indices] = True
        pruned[name] = torch.where(mask, flat, torch.zeros_like(flat)).view_as(g)
    return pruned, {}
