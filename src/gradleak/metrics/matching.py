"""Scoring a reconstructed batch: optimal assignment to the truth, then per-image metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from gradleak.metrics.image import mse, psnr, ssim

#: PSNR (dB) from which an image counts as recovered exactly (float32 round-off reaches 100+).
EXACT_DB = 60.0


def match_images(reconstruction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Order of reconstructed images that best matches ``truth`` (Hungarian on pairwise MSE).

    Returns ``order`` with ``reconstruction[order][i]`` matched to ``truth[i]``.
    A batch reveals a set of images, not their order, so every batch score is taken after this.
    """
    b = len(truth)
    if len(reconstruction) != b:
        raise ValueError(f"{len(reconstruction)} reconstructed images for {b} true images")
    rec = reconstruction.detach().double().flatten(1)
    ref = truth.detach().double().flatten(1)
    cost = torch.cdist(ref, rec).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    order = torch.empty(b, dtype=torch.long)
    order[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return order


def label_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of the batch's labels recovered, counted as a multiset (order-free)."""
    predicted_counts = Counter(torch.as_tensor(predicted).tolist())
    true_counts = Counter(torch.as_tensor(truth).tolist())
    hits = sum(min(n, predicted_counts[label]) for label, n in true_counts.items())
    return hits / max(1, len(truth))


@dataclass
class BatchScore:
    """Per-image scores of a batch after optimal matching, plus the order used."""

    order: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor
    ssim: torch.Tensor
    label_accuracy: float | None

    def summary(self) -> dict:
        out = {
            "psnr": float(self.psnr.mean()),
            "ssim": float(self.ssim.mean()),
            "mse": float(self.mse.mean()),
            "exact_fraction": float((self.psnr >= EXACT_DB).float().mean()),
            "psnr_per_image": [round(float(v), 3) for v in self.psnr],
            "ssim_per_image": [round(float(v), 4) for v in self.ssim],
        }
        if self.label_accuracy is not None:
            out["label_accuracy"] = self.label_accuracy
        return out


def score_batch(
    reconstruction: torch.Tensor,
    truth: torch.Tensor,
    predicted_labels: torch.Tensor | None = None,
    true_labels: torch.Tensor | None = None,
) -> BatchScore:
    """MSE/PSNR/SSIM of every true image against its matched reconstruction, and label accuracy."""
    order = match_images(reconstruction, truth)
    matched = reconstruction.detach()[order]
    accuracy = None
    if predicted_labels is not None and true_labels is not None:
        accuracy = label_accuracy(predicted_labels, true_labels)
    return BatchScore(
        order=order,
        mse=mse(matched, truth),
        psnr=psnr(matched, truth),
        ssim=ssim(matched, truth),
        label_accuracy=accuracy,
    )
