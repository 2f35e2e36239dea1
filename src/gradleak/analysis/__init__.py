"""Analyses of an observation: label and batch-size recovery, per-layer information discard."""

from gradleak.analysis.batch_size import estimate_batch_size
from gradleak.analysis.labels import LabelRecovery, recover_labels

__all__ = ["LabelRecovery", "estimate_batch_size", "recover_labels"]
