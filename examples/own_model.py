"""Your own model in gradleak: a factory returning a ``torch.nn.Module``.

gradleak calls the factory with the keyword arguments it accepts among ``num_classes``,
``in_channels``, ``image_size`` and ``width``; the network maps normalized ``(N, C, H, W)`` images
to ``(N, num_classes)`` logits (``--normalization`` chooses the normalization; default none)::

    gradleak observe --model examples/own_model.py:make_net --images my_photos/ --n-images 1 \\
        --out obs.safetensors
    gradleak attack obs.safetensors --model examples/own_model.py:make_net --out attack/

The observation file records the factory's name and a digest of the network's tensors, never
code: ``gradleak attack`` and ``gradleak analyze`` import it only when you name it again with
``--model``. ``--weights trained.safetensors`` starts from your weights (keys of the network's
``state_dict``; :func:`gradleak.models.save_weights` writes such files).
"""

from __future__ import annotations

from torch import nn


def make_net(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A small CNN: three 3x3 convolutions with BatchNorm and ReLU, then a linear classifier.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes), for any H, W >= 4.
    """

    def block(inputs: int, outputs: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
        ]

    return nn.Sequential(
        *block(in_channels, 16, 1),
        *block(16, 32, 2),
        *block(32, 32, 2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_classes),
    )
