"""Audit a real Flower federation (``pip install 'gradleak[flower]'``).

- :class:`AuditStrategy` (:mod:`.strategy`) wraps a Flower strategy and records every client's
  update as an observation file;
- :func:`update_observation` (:mod:`.capture`) turns the arrays sent and returned into an
  update observation (no Flower needed);
- :func:`attack_captures` (:mod:`.evaluation`) attacks captured updates into the usual
  ``results.json`` and a ``report.html``;
- ``python -m gradleak.flower.demo`` runs the example Flower app (``examples/flower_app``) in
  Flower's simulation engine, then attacks and reports.

Flower is imported only when :class:`AuditStrategy` is used.
"""

from gradleak.flower.capture import align_arrays, update_observation

__all__ = ["AuditStrategy", "align_arrays", "attack_captures", "update_observation"]


def __getattr__(name: str):
    if name == "AuditStrategy":
        from gradleak.flower.strategy import AuditStrategy

        return AuditStrategy
    if name == "attack_captures":
        from gradleak.flower.evaluation import attack_captures

        return attack_captures
    raise AttributeError(f"module 'gradleak.flower' has no attribute {name!r}")
