"""Quantization of what the client sends: k-bit stochastic quantization (QSGD) or the sign.

- ``mode="stochastic"``: QSGD, Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient
  Quantization and Encoding", NeurIPS 2017 (https://arxiv.org/abs/1610.02132), eq. (1): per
  layer, ``Q(g_j) = s_norm * sign(g_j) * l_j / s`` with ``s = 2^(bits-1) - 1`` levels per sign
  and ``l_j`` the stochastic rounding of ``s |g_j| / s_norm`` (up with probability equal to the
  remainder), so that ``E[Q(g)] = g``. ``s_norm`` is the layer's max ``|g|`` (``norm="max"``,
  the default: every level is used) or its l2 norm (``norm="l2"``, the paper's analysis).
- ``mode="sign"``: signSGD, Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
  Problems", ICML 2018 (https://arxiv.org/abs/1802.04434), Algorithm 1: ``sign(g)``, scaled by
  the layer's mean ``|g|`` (``scale=True``, so that the update keeps the layer's l1 norm; the
  scaled sign of Karimireddy et al. 2019) or sent bare (``scale=False``). ``sign(0) = 0``.

What the server sees is the dequantized tensors: what it would decode from the k-bit codes.
"""

from __future__ import annotations

import torch

from gradleak.defenses.client import ClientBatch, Gradients
from gradleak.defenses.registry import register_defense
from gradleak.errors import GradleakError

MODES = ("stochastic", "sign")
NORMS = ("max", "l2")
SCALE_BITS = 32  # one float32 scale per layer


@register_defense(
    "quantize", "update", "k-bit stochastic quantization per layer (QSGD) or the sign (signSGD)"
)
def quantize(
    gradients: Gradients,
    client: ClientBatch,
    *,
    bits: int = 8,
    mode: str = "stochastic",
    norm: str = "max",
    scale: bool = True,
) -> tuple[Gradients, dict]:
    """Quantize every layer as QSGD (``mode="stochastic"``, ``bits`` bits per entry, scale
    ``norm``) or signSGD (``mode="sign"``, 1 bit per entry, times the layer's mean ``|g|``
    unless ``scale=False``); see the module docstring. Stochastic rounding draws from the
    client's seeded generator. Facts: ``bits_per_entry`` (with the per-layer float32 scales)
    and ``levels``, the number of distinct values a layer can take."""
    if mode not in MODES:
        raise GradleakError(f"quantize mode must be one of {MODES}, got {mode!r}")
    if norm not in NORMS:
        raise GradleakError(f"quantize norm must be one of {NORMS}, got {norm!r}")
    if not isinstance(scale, bool):
        raise GradleakError(f"quantize scale must be true or false, got {scale!r}")
    entries = sum(g.numel() for g in gradients.values())
    if mode == "sign":
        signs = {name: _sign(g, scale) for name, g in gradients.items()}
        scales = SCALE_BITS * len(gradients) if scale else 0
        return signs, {"bits_per_entry": _per_entry(entries, scales, 1), "levels": 3}
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise GradleakError(
            f"quantize bits must be an integer in [2, 32] (1 bit: mode=sign), got {bits!r}"
        )
    s = 2 ** (bits - 1) - 1
    quantized = {name: _stochastic(g, s, norm, client.generator) for name, g in gradients.items()}
    facts = {
        "bits_per_entry": _per_entry(entries, SCALE_BITS * len(gradients), bits),
        "levels": 2 * s + 1,
    }
    return quantized, facts


def _stochastic(g: torch.Tensor, s: int, norm: str, generator: torch.Generator) -> torch.Tensor:
    """QSGD eq. (1) on one layer, in float64 so that ``l / s`` is exact; unbiased."""
    x = g.detach().double()
    size = x.abs().max() if norm == "max" else x.norm()
    if not size > 0:
        return torch.zeros_like(g)
    a = (x.abs() / size * s).clamp(max=s)  # in [0, s]
    low = a.floor()
    up = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device) < a - low
    levels = low + up.to(low.dtype)
    return (x.sign() * levels * (size / s)).to(g.dtype)


def _sign(g: torch.Tensor, scale: bool) -> torch.Tensor:
    signs = torch.sign(g.detach())
    return signs * g.detach().abs().mean() if scale else signs


def _per_entry(entries: int, extra_bits: int, bits: int) -> float:
    return round(bits + extra_bits / max(entries, 1), 6)
