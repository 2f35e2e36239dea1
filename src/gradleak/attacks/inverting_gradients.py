"""Inverting Gradients (Geiping, Bauermeister, Droege and Moeller, NeurIPS 2020),
https://arxiv.org/abs/2003.14053.

Minimizes the cosine distance between gradients (eq. 4) plus a total-variation prior, over
boxed pixels, with Adam on the signed gradient and a step decay at 3/8, 5/8, 7/8 of the run.
"""

from __future__ import annotations

from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings


class InvertingGradients(GradientMatchingAttack):
    """Inverting Gradients: cosine distance + TV, signed Adam (lr 0.1) with step decay, boxed.

    Labels default to ``auto``: known if the threat model allows, else recovered analytically
    (iDLG at batch size 1, count-aware batch label recovery otherwise).

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W), labels (B,).

    Examples::
        >>> reconstruction = InvertingGradients(tv=1e-4)(observation, iterations=2000, restarts=4)
        >>> reconstruction.gradient_distance
    """

    name = "inverting_gradients"
    defaults = MatchingSettings(
        distance="cosine",
        optimizer="adam",
        lr=0.1,
        iterations=2000,
        tv=1e-4,
        labels="auto",
        boxed=True,
        signed=True,
        lr_decay=True,
    )
