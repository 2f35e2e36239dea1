"""Model registry: build the networks attacked in the literature by name, with their weights.

>>> from gradleak.models import build_model
>>> model = build_model("resnet20", weights="pretrained").eval()  # images in [0, 1], NCHW
"""

# Importing the model modules registers them.
from gradleak.models import (  # noqa: F401
    convnet,
    fc,
    lenet,
    mlp,
    resnet,
    resnet_cifar,
    rgap_cnn,
)
from gradleak.models.registry import build_model, list_models, model_info
from gradleak.models.weights import load_weights, save_weights
from gradleak.models.wrapper import ImageClassifier

__all__ = [
    "ImageClassifier",
    "build_model",
    "list_models",
    "load_weights",
    "model_info",
    "save_weights",
]
