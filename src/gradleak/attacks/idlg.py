"""Improved DLG (Zhao, Mopuri and Bilen, 2020), https://arxiv.org/abs/2001.02610.

iDLG reads the label of a single sample analytically from the output layer's gradient (see
:func:`gradleak.gradient.idlg_label`) and then runs DLG's optimization for the image only.
"""

from __future__ import annotations

import dataclasses

from gradleak.attacks.dlg import DLG
from gradleak.attacks.registry import register_attack


@register_attack
class IDLG(DLG):
    """iDLG: DLG with the analytic label (batch size 1; count-aware recovery for larger batches).

    Shape:
        observation of one image (C, H, W) -> images (1, C, H, W), labels (1,).

    Examples::
        >>> reconstruction = IDLG()(observation)
        >>> reconstruction.labels  # the analytic label
    """

    name = "idlg"
    expected = "analytic labels, then l2 matching; exact labels at batch size 1"
    defaults = dataclasses.replace(DLG.defaults, labels="analytic")
