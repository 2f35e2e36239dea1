"""Analyses of an observation: what it gives away before any optimization runs.

``gradleak analyze`` (:func:`~gradleak.analysis.report.analyze`) combines the batch size and
labels read off the gradient (:mod:`gradleak.gradient`), R-GAP's per-layer rank analysis
(:mod:`~gradleak.analysis.rank`) and which registered attacks apply.
"""

from gradleak.analysis.rank import layer_rank_analysis
from gradleak.analysis.report import analyze
from gradleak.gradient import LabelRecovery, estimate_batch_size, recover_labels

__all__ = [
    "LabelRecovery",
    "analyze",
    "estimate_batch_size",
    "layer_rank_analysis",
    "recover_labels",
]
