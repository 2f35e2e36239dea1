"""Metrics: image quality after optimal matching, label accuracy."""

from gradleak.metrics.image import gray_psnr, mse, psnr, ssim
from gradleak.metrics.matching import BatchScore, label_accuracy, match_images, score_batch

__all__ = [
    "BatchScore",
    "gray_psnr",
    "label_accuracy",
    "match_images",
    "mse",
    "psnr",
    "score_batch",
    "ssim",
]
