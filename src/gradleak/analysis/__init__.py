"""Analyses of an observation: label and batch-size recovery, per-layer information discard."""
