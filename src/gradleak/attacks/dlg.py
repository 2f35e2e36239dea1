"""Deep Leakage from Gradients (Zhu, Liu and Han, NeurIPS 2019), https://arxiv.org/abs/1906.08935.

Random dummy images and dummy label logits are optimized jointly with L-BFGS so that their
gradient matches the observed one in squared l2 distance (eq. 4), without any image prior.
"""

from __future__ import annotations

from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings
from gradleak.attacks.registry import register_attack


@register_attack
class DLG(GradientMatchingAttack):
    """DLG: l2 gradient matching, L-BFGS (lr 1), joint label optimization, no prior.

    Shape:
        observation gradients of a batch of B images (C, H, W) -> images (B, C, H, W), labels (B,).

    Examples::
        >>> reconstruction = DLG()(observation, iterations=300)
        >>> reconstruction.images.shape  # (B, C, H, W)
    """

    name = "dlg"
    expected = "images and labels by joint l2 matching; degrades with batch size"
    defaults = MatchingSettings(
        distance="l2",
        optimizer="lbfgs",
        lr=1.0,
        iterations=300,
        init="rand",
        labels="joint",
        patience=30,
    )
