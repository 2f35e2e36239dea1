"""The :class:`ImageClassifier` wrapper: input normalization in front of a raw network."""

from __future__ import annotations

import torch
from torch import nn

from gradleak.errors import GradleakError


class ImageClassifier(nn.Module):
    """A classifier that takes images in [0, 1] and normalizes them itself.

    Attacks optimize pixels in [0, 1]; the per-channel ``(x - mean) / std`` lives here so that
    no attack has to know it. The raw network is ``self.net`` (its ``state_dict`` is what weight
    files hold); ``mean`` and ``std`` are non-persistent buffers shaped ``(1, C, 1, 1)``.

    Args:
        net: the raw network, mapping normalized ``(N, C, H, W)`` images to ``(N, K)`` logits.
        config: JSON-serializable architecture description with at least ``in_channels``,
            ``image_size``, ``mean`` and ``std``; for registry models exactly the keyword
            arguments of :func:`~gradleak.models.build_model` that rebuild the architecture.

    Shape:
        - Input: ``(N, C, H, W)`` float in [0, 1].
        - Output: ``(N, num_classes)`` logits.
    """

    def __init__(self, net: nn.Module, config: dict) -> None:
        super().__init__()
        channels = config["in_channels"]
        if len(config["mean"]) != channels or len(config["std"]) != channels:
            raise GradleakError(f"mean and std need {channels} values, one per input channel")
        if min(config["std"]) <= 0:
            raise GradleakError(f"std must be positive, got {list(config['std'])}")
        self.net = net
        self.config = dict(config)
        self.register_buffer("mean", _channel_tensor(config["mean"]), persistent=False)
        self.register_buffer("std", _channel_tensor(config["std"]), persistent=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images the model was built for."""
        size = self.config["image_size"]
        return (self.config["in_channels"], size, size)

    def has_batchnorm(self) -> bool:
        """Whether the network holds BatchNorm layers (their statistics leak, and train/eval
        mode changes the gradient)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.net.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise GradleakError(
                f"expected images shaped (N, {self.mean.shape[1]}, H, W), got {tuple(x.shape)}"
            )
        return self.net((x - self.mean) / self.std)


def _channel_tensor(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.get_default_dtype()).view(
        1, -1, 1, 1
    )
