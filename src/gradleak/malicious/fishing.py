"""Class fishing (Wen, Geiping, Fowl, Goldblum and Goldstein, ICML 2022, "Fishing for User Data
in Large-Batch Federated Learning via Gradient Magnification", sec. 3),
https://arxiv.org/abs/2202.00580.

The server changes the weights of the classifier head ``z = W h + b`` (K classes, ``h`` the
head's input), never the architecture, so that the images of one class ``t`` dominate the
client's averaged gradient and the others' vanish. Every other class gets a zero weight row and
a zero bias; the target class keeps its row and loses ``margin`` from its bias:

    z_j = 0  (j != t),        z_t = w_t . h + b_t - margin.

For cross-entropy, ``dL_i/dh = W^T (p_i - e_{y_i}) = (p_{it} - [y_i = t]) w_t``, and
``p_{it} = exp(z_t) / (K - 1 + exp(z_t))``, ``exp(-margin)`` times the exponential of the image's
original logit, is negligible on every image. So an image of another class sends nothing
below the head, and an image of class ``t`` is maximally wrong (``p_t - 1 = -1``): every layer
below the head, and the head's row ``t``, receive

    g = (1 / B) sum_{i: y_i = t} grad_theta L_i,

the gradient of the class's images alone, as if the batch held only them. That is exact with
eval-mode BatchNorm: on a trained ResNet-20 and 64 CIFAR-10 test images, one of them of class
``t``, the cosine between ``g`` and that image's own gradient below the head is 1.0000 (0.06
and -0.19 on the unmodified model, two batches). Train-mode BatchNorm couples the images
through the batch statistics: 0.54 and 0.61 against the image's gradient under them.

The head's other rows receive ``(1 / (K - 1) - [y_i = j]) h_i`` from every image, and the
biases count the labels: ``dL/db_j = 1 / (K - 1) - n_j / B``, ``dL/db_t = -n_t / B``. The
attack of the same name (:mod:`gradleak.attacks.fishing`) inverts ``g`` as one image's
gradient; with several images of class ``t`` it gets their blend.

Wen et al.'s feature fishing, which separates those images by a threshold on one feature, needs
several rounds (differences of gradients at two thresholds) or a gate inside the network: in one
round, with a linear head, the images of other classes on the threshold's wrong side leak back
in. It is not implemented.
"""

from __future__ import annotations

import copy

import torch

from gradleak.errors import GradleakError
from gradleak.gradient.structure import output_layer
from gradleak.malicious.registry import ServerContext, register_server
from gradleak.models import ImageClassifier


@register_server(
    "fishing",
    "Wen et al. 2022 (Fishing for User Data): a head that leaves only class `target` in the "
    "gradient",
    attack="fishing",
)
def fishing(
    model: ImageClassifier,
    context: ServerContext,
    *,
    target: int = 0,
    margin: float = 100.0,
) -> ImageClassifier:
    """``model`` with its classifier head fishing for the images of class ``target``.

    Args:
        target: the class whose images the gradient keeps.
        margin: how far the target class's logit is pushed below the others (which are 0): an
            image's share of the gradient below the head, unless it is of class ``target``, is
            about ``exp(z_t - margin)``, ``z_t`` its original target logit.
    """
    num_classes = model.config["num_classes"]
    if not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < num_classes:
        raise GradleakError(
            f"fishing's target must be a class in 0..{num_classes - 1}, got {target!r}"
        )
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not 1 <= margin <= 1e4:
        raise GradleakError(f"fishing's margin must lie in [1, 10000], got {margin!r}")
    if "server" in model.config:
        raise GradleakError(
            f"the model already carries the server modification {model.config['server']['name']!r}"
        )
    modified = copy.deepcopy(model)
    name, head = output_layer(modified)
    if head.bias is None:
        raise GradleakError(f"fishing needs an output layer with a bias; '{name}' has none")
    with torch.no_grad():
        keep = head.weight[target].clone()
        head.weight.zero_()
        head.weight[target] = keep
        shifted = head.bias[target] - float(margin)
        head.bias.zero_()
        head.bias[target] = shifted
    modified.config["server"] = {"name": "fishing", "target": target, "margin": margin}
    return modified
