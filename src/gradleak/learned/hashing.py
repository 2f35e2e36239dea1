"""Feature hashing (a count sketch) of model gradients: the learned inverter's input.

Learning to Invert (Wu, Chen, Guo and Weinberger, UAI 2023, https://arxiv.org/abs/2210.10880)
compresses the gradient g in R^P to d features before the inverter sees it:

    phi(g)_j = sum_{i : h(i) = j} s(i) g_i,      h : [P] -> [d],  s : [P] -> {-1, +1}

(Weinberger et al. 2009). The map is linear, phi(sum_k a_k g_k) = sum_k a_k phi(g_k), so the
hash of a batch's mean gradient is the mean of its members' hashes, which the training uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from gradleak.errors import GradleakError


class FeatureHasher:
    """Count sketch of flattened gradients to ``dim`` features, with seeded h and s.

    The buckets h and signs s for a gradient of P values are drawn from
    ``torch.Generator().manual_seed(seed)`` (first P bucket indices, then P signs), so the same
    ``(dim, seed, P)`` always gives the same sketch. It is computed with ``index_add`` in O(P),
    never with a dense (d, P) matrix.

    Args:
        dim: number of features d.
        seed: seed of h and s.

    Shape:
        (P,) -> (d,) and (N, P) -> (N, d); or a gradient dict name -> tensor (one gradient) or
        name -> (N, *shape) (``batched=True``), flattened in the given ``names`` order.

    Examples::
        >>> hasher = FeatureHasher(2048, seed=0)
        >>> features = hasher(observation.gradients, names)  # (2048,)
    """

    def __init__(self, dim: int, seed: int = 0):
        if int(dim) < 1:
            raise GradleakError(f"the hash dimension must be at least 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(buckets, signs)`` for a gradient of ``size`` values: (P,) int64 and (P,) float32."""
        if size not in self._tables:
            generator = torch.Generator().manual_seed(self.seed)
            buckets = torch.randint(0, self.dim, (size,), generator=generator)
            signs = torch.randint(0, 2, (size,), generator=generator).float().mul_(2).sub_(1)
            self._tables[size] = (buckets, signs)
        return self._tables[size]

    def __call__(
        self,
        gradient: torch.Tensor | Mapping[str, torch.Tensor],
        names: Sequence[str] | None = None,
        *,
        batched: bool = False,
    ) -> torch.Tensor:
        """The sketch of one gradient (P,) or of a batch (N, P) (see the class docstring)."""
        if isinstance(gradient, Mapping):
            gradient = flatten_gradients(gradient, names, batched=batched)
        if gradient.dim() not in (1, 2):
            raise GradleakError(
                f"hash a flat gradient (P,) or a batch (N, P), got shape {list(gradient.shape)}"
            )
        flat = gradient.detach().float()
        buckets, signs = (t.to(flat.device) for t in self.tables(flat.shape[-1]))
        out = flat.new_zeros((*flat.shape[:-1], self.dim))
        return out.index_add_(flat.dim() - 1, buckets, flat * signs)


def flatten_gradients(
    gradients: Mapping[str, torch.Tensor],
    names: Sequence[str] | None = None,
    *,
    batched: bool = False,
) -> torch.Tensor:
    """Concatenate the gradient tensors in ``names`` order (default: the dict's order).

    Returns (P,), or (N, P) when ``batched`` (every tensor has a leading dimension N).
    """
    names = list(gradients) if names is None else list(names)
    missing = [n for n in names if n not in gradients]
    if missing:
        raise GradleakError(f"the gradient has no tensor {', '.join(map(repr, missing[:3]))}")
    if batched:
        return torch.cat([gradients[n].reshape(len(gradients[n]), -1) for n in names], dim=1)
    return torch.cat([gradients[n].reshape(-1) for n in names])
