"""Sparse unmixing of a fully-connected layer's batched gradient behind ReLU (after SPEAR).

Dimitrov, Baader, Müller, Vechev, "SPEAR: Exact Gradient Inversion of Batches in Federated
Learning", 2024, https://arxiv.org/abs/2403.03945. For a first layer ``z = W x + b`` and a mean
loss over B samples the observed gradient is

    G = [dL/dW | dL/db] = (1/B) Delta [X | 1],      Delta = [delta_1 .. delta_B]  (n x B),

with ``delta_i = dloss_i / dz``. Behind ReLU, ``delta_i`` is exactly zero on the units where
sample i's pre-activation is negative, about half of the n. ``Delta`` spans the top-B left
singular subspace U of ``G = U S V^T``, so ``delta_i = U p_i`` and the ``delta_i`` are the
*sparse* directions of span(U). Once P = [p_1 .. p_B] is known (each column up to scale),
``U S = (1/B) U P C`` gives the inputs ``[x_i | 1] = c_i^T V^T``:

    C = B P^{-1} S,          each row c_i scaled so that its bias coordinate v_b . c_i = 1.   (*)

A direction is accepted from a zero pattern (the units where a sample is off) when U restricted
to it has a unique null vector q (refitted by least squares, the pattern re-read from ``U q``
until it settles, at least n/5 units) and some input ``z = M c`` of the subspace is negative on
those units and positive where ``U q`` clearly is not zero (a linear program; a combination of
two samples that vanishes where both do fails it). Patterns come from, in turn:

1. (not in SPEAR) the next linear layer, when the ReLU feeds one: its weight gradient's row
   space is span{relu(z_i)}, and each sample's coefficients solve ``relu(M c) in span{relu(z_i)}``
   on their own, an equation continuous in c (unlike ``delta``'s pattern): Levenberg-Marquardt
   on its relative residual from random starts, in the space left by the directions found so far;
2. SPEAR's sampling: B - 1 random rows of U, their null vector by a batched QR (exponential in B:
   at B = 16 about one draw in 30,000 lands on one sample's zeros);
3. (*) for the last one or two: the missing samples' rows of P^{-1} are orthogonal to the found
   directions, so their coefficients lie on a known point or line, searched cell by cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linprog

CHUNK = 10_000  # random row subsets evaluated at once
MIN_ZERO_FRACTION = 0.2  # a pattern must hold at least this fraction of the n units
ROUNDS = 4  # most rounds of descent starts (each stops early once nothing new is found)
FLOOR_FACTOR = 100.0  # zero units: within this factor of the median zero (the noise floor)


@dataclass
class SparseUnmixing:
    """What :func:`sparse_unmix` found.

    Attributes:
        coefficients: C (B x B), ``[x_i | 1] = c_i^T V^T`` with bias coordinate 1.
        directions: P (B x B), unit columns, ``delta_i ∝ U p_i``.
        descended, sampled, completed: directions found by each source, in turn.
        missing: directions not found: their columns of P are arbitrary, their images (and,
            through (*), the others') wrong.
        draws: random row subsets drawn.
    """

    coefficients: torch.Tensor
    directions: torch.Tensor
    descended: int
    sampled: int
    completed: int
    missing: int
    draws: int


class _Directions:
    """Validated sparse directions of span(U), without duplicates."""

    def __init__(self, left, bias_row, preactivations, tolerance: float):
        self.left, self.bias_row, self.preactivations = left, bias_row, preactivations
        self.tolerance = tolerance
        self.batch = left.shape[1]
        self.min_zeros = max(2 * (self.batch - 1), int(MIN_ZERO_FRACTION * left.shape[0]))
        self.vectors: list[torch.Tensor] = []
        self.zero_sets: list[torch.Tensor] = []  # of the found directions
        self.rejected: set[bytes] = set()  # patterns already turned down

    def __len__(self) -> int:
        return len(self.vectors)

    def matrix(self) -> torch.Tensor:
        return torch.stack(self.vectors, 1) if self.vectors else self.left.new_zeros(self.batch, 0)

    def known(self, directions: torch.Tensor, slack: float = 1e-6) -> torch.Tensor:
        """Whether each unit row of ``directions`` (k x B) is, up to sign, a found one."""
        if not self.vectors:
            return torch.zeros(len(directions), dtype=torch.bool)
        return ((directions @ self.matrix()).abs() > 1 - slack).any(1)

    def offer(self, zeros: torch.Tensor) -> bool:
        """Keep the direction that vanishes on the units ``zeros`` (bool, n) if valid and new."""
        key = zeros.numpy().tobytes()
        if key in self.rejected:
            return False
        fitted = self.refit(zeros)
        if (
            fitted is None
            or self.known(fitted[0][None])[0]
            or self.within_found(fitted[1])
            or not self.consistent(*fitted[1:])
        ):
            self.rejected.add(key)
            return False
        self.vectors.append(fitted[0])
        self.zero_sets.append(fitted[1])
        return True

    def within_found(self, zeros: torch.Tensor) -> bool:
        """Whether ``zeros`` lies, but for two units, in a found direction's zero set: the
        pattern of a combination of that sample and another (cheaper than :meth:`consistent`)."""
        return any(int((zeros & ~found).sum()) <= 2 for found in self.zero_sets)

    def refit(self, zeros: torch.Tensor, rounds: int = 8):
        """``(q, zeros, on)``: the unit q whose U q vanishes on ``zeros`` (least squares), the
        zero units re-read from ``U q`` until they settle: those below ``tolerance`` times the
        largest entry and below ``FLOOR_FACTOR`` times the median over the current zeros (the
        noise floor, about 1e-9 of the largest once the fit is exact), so that a unit wrongly
        read as off, whose residual stands out of the floor, drops out, even one whose
        ``delta`` is only 1e-5 of the largest; ``on``: the units above ``tolerance`` (those in
        between are left undecided). None unless the zeros settle on enough units with one
        null vector."""
        tol = self.tolerance
        for _ in range(rounds):
            if int(zeros.sum()) < self.min_zeros:
                return None
            _, s, vh = torch.linalg.svd(self.left[zeros], full_matrices=False)
            values = (self.left @ vh[-1]).abs()
            floor = values[zeros].median().clamp_min(1e-13 * values.max())
            new = values <= torch.minimum(tol * values.max(), FLOOR_FACTOR * floor)
            if torch.equal(new, zeros):  # a plane of null vectors: two samples vanish there
                unique = s[-1] <= tol * s[0] and s[-2] >= 100 * tol * s[0]
                return (vh[-1], zeros, values > tol * values.max()) if unique else None
            zeros = new
        return None

    def consistent(self, zeros: torch.Tensor, on: torch.Tensor) -> bool:
        """Whether some input of the subspace, ``z = M c`` with ``v_b . c = 1``, is negative on
        ``zeros`` and positive on ``on`` (other units free), but for a few units. Linear
        program: min sum(e) subject to ``(M c)_r <= e_r`` on ``zeros``, ``-(M c)_r <= e_r`` on
        ``on``, e >= 0."""
        M = self.preactivations.numpy()
        n, batch = M.shape
        sign = (zeros.double() - on.double()).numpy()[:, None]
        result = linprog(
            np.concatenate([np.zeros(batch), np.ones(n)]),
            A_ub=np.hstack([sign * M, -np.eye(n)]),
            b_ub=np.zeros(n),
            A_eq=np.concatenate([self.bias_row.numpy(), np.zeros(n)])[None],
            b_eq=[1.0],
            bounds=[(None, None)] * batch + [(0, None)] * n,
            method="highs",
        )
        if result.status != 0:
            return False
        size = np.abs(M @ result.x[:batch]).max()
        return int((result.x[batch:] > 1e-6 * size).sum()) <= max(2, n // 100)


def sparse_unmix(
    left: torch.Tensor,
    singular_values: torch.Tensor,
    bias_row: torch.Tensor,
    preactivations: torch.Tensor,
    relu_outputs: torch.Tensor | None = None,
    *,
    starts: int = 4,
    steps: int = 60,
    draws: int = 100_000,
    tolerance: float = 1e-4,
    spread: float = 1.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SparseUnmixing:
    """Unmix ``G = U S V^T`` (top B) of a linear layer followed by ReLU; see the module docstring.

    Args:
        left: U (n x B), float64; ``singular_values``: S (B,); ``bias_row``: v_b (B,), the bias
            coordinate of V.
        preactivations: M (n x B), ``z = W x + b = M c`` for ``[x | 1] = c^T V^T``.
        relu_outputs: an orthonormal basis H (n x B) of span{relu(z_i)} (the next linear layer's
            top-B right singular vectors), or None (no descent).
        starts: descent starts per missing sample and round; ``steps``: steps per start.
        draws: most random row subsets.
        tolerance: entries below this fraction of a vector's largest count as zero.
        spread: the typical norm of an input x (the descent's starts).
        generator: seeds the starts and row subsets.
        progress: ``progress(found, B)`` whenever directions are added.
    """
    batch = left.shape[1]
    found = _Directions(left, bias_row, preactivations, tolerance)
    counts = {"descended": 0, "sampled": 0, "completed": 0}

    def add(source: str, count: int) -> None:
        counts[source] += count
        if count and progress is not None:
            progress(len(found), batch)

    def complete() -> bool:
        while 0 < batch - len(found) <= 2:
            added = _complete(found, singular_values)
            add("completed", added)
            if not added:
                break
        return len(found) == batch

    if relu_outputs is not None and starts > 0:
        for _ in range(ROUNDS):
            if complete():
                break
            count = starts * (batch - len(found))
            added = _descend(found, singular_values, relu_outputs, count, steps, spread, generator)
            add("descended", added)
            if not added:
                break
    done_draws = 0
    valid = torch.nonzero(left.norm(dim=1) > tolerance * left.norm(dim=1).max()).flatten()
    while not complete() and done_draws < draws and len(valid) >= batch - 1:
        size = min(CHUNK, draws - done_draws)
        add("sampled", _sample(found, valid, size, generator))
        done_draws += size
    directions = found.matrix()
    missing = batch - len(found)
    if missing:  # arbitrary: the found directions' orthogonal complement
        q, _ = torch.linalg.qr(directions, mode="complete")
        directions = torch.cat([directions, q[:, len(found) :]], 1)
    return SparseUnmixing(
        coefficients_of(directions, singular_values, bias_row),
        directions,
        **counts,
        missing=missing,
        draws=done_draws,
    )


def coefficients_of(
    directions: torch.Tensor, singular_values: torch.Tensor, bias_row: torch.Tensor
) -> torch.Tensor:
    """(*): C = P^{-1} S with each row scaled to bias coordinate 1 (B x B)."""
    rows = torch.linalg.solve(directions, torch.diag(singular_values))
    return rows / (rows @ bias_row)[:, None]


def _missing_space(found: _Directions, singular_values: torch.Tensor) -> torch.Tensor:
    """B x m: by (*), the coefficients of the m missing samples are ``S``-scaled vectors
    orthogonal to the found directions."""
    P = found.matrix()
    if P.shape[1] == 0:
        return torch.diag(singular_values)
    q, _ = torch.linalg.qr(P, mode="complete")
    return q[:, P.shape[1] :] * singular_values[:, None]


def _descend(found, singular_values, relu_outputs, count, steps, spread, generator) -> int:
    """``count`` Levenberg-Marquardt descents, batched, on ``|(I - H H^T) h| / |h|`` with
    ``h = relu(M c)``, over the missing samples' coefficients in the slice ``v_b . c = 1``
    (``s`` below: c = origin + slice s). Offers the zero-residual points' patterns; returns how
    many directions were added."""
    space, _ = torch.linalg.qr(_missing_space(found, singular_values))
    b = space.T @ found.bias_row
    dim = len(b) - 1
    slice_ = torch.linalg.qr(torch.eye(len(b), dtype=b.dtype) - torch.outer(b, b) / b.dot(b))[0]
    A = found.preactivations @ space @ slice_[:, :dim]  # n x dim
    z0 = found.preactivations @ (space @ (b / b.dot(b)))
    H = relu_outputs

    def residual(s):
        h = (z0 + s @ A.T).clamp_min(0)
        norm = h.norm(dim=1, keepdim=True).clamp_min(1e-300)
        return (h - (h @ H) @ H.T) / norm, h, norm

    s = torch.randn(count, dim, generator=generator, dtype=A.dtype) * (spread / max(dim, 1) ** 0.5)
    rho, h, norm = residual(s)
    cost = rho.pow(2).sum(1)
    damping = torch.full((count,), 1e-3, dtype=A.dtype)
    for _ in range(steps if dim else 0):
        DA = (h > 0).to(A.dtype)[:, :, None] * A  # count x n x dim
        J = (DA - H @ (H.T @ DA)) / norm[:, :, None]
        J -= rho[:, :, None] * (h[:, None, :] @ DA) / norm[:, :, None] ** 2
        JTJ = J.mT @ J
        scale = torch.diag_embed(JTJ.diagonal(dim1=1, dim2=2).clamp_min(1e-30))
        step = torch.linalg.solve(
            JTJ + damping[:, None, None] * scale, -(rho[:, None, :] @ J)[:, 0]
        )
        rho_t, h_t, norm_t = residual(s + step)
        cost_t = rho_t.pow(2).sum(1)
        better = cost_t < cost
        s, rho, h, norm = (
            torch.where(better[:, None], new, old)
            for new, old in ((s + step, s), (rho_t, rho), (h_t, h), (norm_t, norm))
        )
        cost = torch.where(better, cost_t, cost)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-12, 1e10)
        if bool(((cost <= found.tolerance**2) | (damping >= 1e10)).all()):
            break
    before = len(found)
    for k in torch.nonzero(cost <= found.tolerance**2).flatten():
        if len(found) == found.batch:
            break
        found.offer(z0 + A @ s[k] <= 0)
    return len(found) - before


def _sample(found: _Directions, valid: torch.Tensor, size: int, generator) -> int:
    """SPEAR's sampling: null vectors of ``size`` random (B - 1)-row subsets of U (rows
    ``valid``); the sparse ones are offered. Returns how many directions were added."""
    left, batch = found.left, found.batch
    picks = torch.rand(size, len(valid), generator=generator, dtype=torch.float64)
    rows = valid[picks.topk(batch - 1, dim=1).indices]
    q, r = torch.linalg.qr(left[rows].mT, mode="complete")
    diagonal = r.diagonal(dim1=-2, dim2=-1).abs()
    q = q[diagonal.min(1).values > 1e-6 * diagonal.max(1).values, :, -1]  # rank B - 1 only
    values = (q @ left.T).abs()
    zeros = values <= 10 * found.tolerance * values.amax(1, keepdim=True)
    new = (zeros.sum(1) >= found.min_zeros) & ~found.known(q, slack=1e-4)
    before = len(found)
    patterns = torch.unique(zeros[new], dim=0)  # many draws land on the same sample
    for pattern in patterns[patterns.sum(1).argsort(descending=True)]:  # samples before mixtures
        if len(found) == batch:
            break
        found.offer(pattern)
    return len(found) - before


def _complete(found: _Directions, singular_values: torch.Tensor) -> int:
    """The last one or two directions by (*): the missing coefficients lie on a point (m = 1)
    or a line (m = 2; c(t) = c(-t) after bias scaling, so half a turn of angles), and the ReLU
    pattern of ``M c`` changes only where a unit's or the bias coordinate's sign does: one
    candidate per cell. Returns how many directions were added."""
    basis = _missing_space(found, singular_values)
    if basis.shape[1] == 1:
        points = basis.T
    else:
        A = torch.cat([found.preactivations @ basis, (found.bias_row @ basis)[None]])
        angles = torch.atan2(-A[:, 0], A[:, 1]).remainder(torch.pi).sort().values
        middle = (angles + torch.cat([angles[1:], angles[:1] + torch.pi])) / 2
        points = torch.stack([middle.cos(), middle.sin()], 1) @ basis.T
    points = points / (points @ found.bias_row)[:, None]
    before = len(found)
    for zeros in (points @ found.preactivations.T) <= 0:
        if len(found) == found.batch:
            break
        found.offer(zeros)
    return len(found) - before
