"""The attack on a fishing server's model (Wen, Geiping, Fowl, Goldblum and Goldstein, ICML 2022,
"Fishing for User Data in Large-Batch Federated Learning via Gradient Magnification"),
https://arxiv.org/abs/2202.00580.

The server's head (:mod:`gradleak.malicious.fishing`) leaves in the averaged gradient, below the
head and in the head's row ``t``, only the images of the fished class ``t``: with one such image,
the gradient of that image alone, divided by B. Inverting Gradients' cosine objective is scale
free, so the attack inverts it as the gradient of a batch of one image labelled ``t`` (on the
head's other rows, which mix every image, it matches nothing). The head's bias gradient counts
the batch's labels exactly: ``dL/db_t = -n_t / B`` and ``dL/db_j = 1 / (K - 1) - n_j / B``.

Measured on the pretrained ResNet-20 in eval mode, 64 CIFAR-10 test images, 1000 iterations
(70 s on one thread): the batch's only dog 16.4 dB PSNR (flat gray: 14.3; Inverting Gradients
on the unmodified batch, 100 iterations in 180 s, its best-matching image: 15.1), another
batch's only frog 9.5 dB (gray 9.8, Inverting Gradients 9.1); three cars, blended, 12.0.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from gradleak.attacks.base import AttackContext, Reconstruction, requirement
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.registry import register_attack
from gradleak.attacks.server_block import made_by
from gradleak.errors import GradleakError
from gradleak.gradient.simulation import ClientSimulator
from gradleak.gradient.structure import batchnorm_layers, output_layer
from gradleak.malicious import server_record
from gradleak.models import ImageClassifier

FILL = 0.5
"""The gray of the images the attack does not target."""


@requirement("an image of the fished class in the batch")
def FISHED_IMAGE(context: AttackContext) -> str | None:
    if server_record(context.observation.model_config, "fishing") is None:
        return None  # made_by("fishing") says why
    try:
        target, count = fished_count(context.observation, context.model, context.batch_size)
    except GradleakError as err:
        return str(err)
    if count < 0.5:
        return (
            f"the batch holds no image of the fished class {target} (its bias gradient counts "
            f"{count:.2f}): the gradient carries no image"
        )
    return None


def fished_count(observation, model: ImageClassifier, batch_size: int) -> tuple[int, float]:
    """The fished class and how many images of it a batch of ``batch_size`` holds,
    ``-B dL/db_t`` (exact for the fishing head, whatever the BatchNorm mode)."""
    record = server_record(observation.model_config, "fishing")
    if record is None:
        raise GradleakError("the observation's model was not sent by the fishing server")
    name, head = output_layer(model)
    target = record.get("target")
    if not isinstance(target, int) or not 0 <= target < head.out_features or head.bias is None:
        raise GradleakError(f"the fishing record {record} does not fit the output layer '{name}'")
    return target, -batch_size * float(observation.gradients[f"{name}.bias"][target])


class _FishedRows(ClientSimulator):
    """The replay with the head's rows other than the fished class's zeroed: those mix every
    image of the batch, and the candidate matches none of them."""

    def __init__(self, model: ImageClassifier, masks: dict[str, torch.Tensor], **kwargs):
        super().__init__(model, **kwargs)
        self.masks = [masks.get(name) for name in self.names]

    def simulate(self, images, labels, lr=None):
        gradients, statistics = super().simulate(images, labels, lr)
        return masked(gradients, self.masks), statistics


def masked(gradients, masks) -> tuple[torch.Tensor, ...]:
    """``gradients`` times ``masks`` (None: kept), in parameter order."""
    pairs = zip(gradients, masks, strict=True)
    return tuple(g if m is None else g * m.to(g.device) for g, m in pairs)


@register_attack
class FishingAttack(InvertingGradients):
    """Fishing: Inverting Gradients on the fished gradient, as one image of the fished class.

    Needs an observation of a model sent by the fishing server
    (:func:`gradleak.malicious.modify_model` with ``"fishing:target=K"``); its label is the
    fished class ``K``, whatever the threat model hides. Reconstructs one image: when the batch
    holds several images of class ``K``, their mixture (``notes["fished_images"]`` counts them,
    read off the bias gradient). The replay runs BatchNorm in eval mode: on a train-mode
    observation with the batch's statistics when the threat model grants them, else with the
    running statistics; either way without the statistics' coupling of the batch's images in
    the backward pass (``notes["batchnorm"]``).

    Shape:
        observation of B images (C, H, W) -> images (B, C, H, W): the reconstruction first, the
        other B - 1 flat gray (0.5); labels (B,): ``K`` first, then the others' labels (known,
        or counted from the bias gradient).

    Examples::
        >>> observation = observe(modify_model(model, "fishing:target=3"), images, labels)
        >>> FishingAttack()(observation, iterations=1000).images[0]
    """

    name = "fishing"
    trained_recipe = {}  # its own budget, measured in benchmarks/malicious_servers.py
    expected = "one image of the fished class, alone in the gradient if the class is unique"
    defaults = dataclasses.replace(InvertingGradients.defaults, labels="known")
    requirements = (made_by("fishing"), FISHED_IMAGE)
    reads_updates = False

    def __init__(self, **overrides):
        super().__init__(**overrides)
        if self.settings.labels != "known":
            raise GradleakError(
                "the fishing attack's label is the fished class: it takes no labels setting"
            )
        if self.settings.bn and self.settings.bn_statistics == "exact":
            raise GradleakError(
                "the batch's BatchNorm statistics are not the fished image's: use "
                "bn_statistics='running' or 'proxy'"
            )

    def expectation(self, context: AttackContext) -> str:
        target, count = fished_count(context.observation, context.model, context.batch_size)
        if round(count) == 1:
            return f"the one image of class {target}, alone in the gradient"
        return f"one blend of the {round(count)} images of class {target}"

    def simulator(self, context: AttackContext) -> ClientSimulator:
        target = server_record(context.observation.model_config, "fishing")["target"]
        return _FishedRows(
            context.model,
            _row_masks(context.model, target),
            batch_statistics=context.settings.bn > 0,
            observation=context.observation,
        )

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        observation, batch_size = context.observation, context.batch_size
        target, count = fished_count(observation, context.model, batch_size)
        single = self._one_image(context, target)
        result = super().reconstruct(single)
        filler = result.images.new_full((batch_size - 1, *result.images.shape[1:]), FILL)
        result.images = torch.cat([result.images, filler])
        result.frames = [torch.cat([frame, filler.to(frame.device)]) for frame in result.frames]
        result.labels = torch.cat(
            [result.labels.cpu(), _other_labels(observation, context.model, target, batch_size)]
        )
        result.notes.update(
            targeted_images=1,
            fished_class=target,
            fished_images=round(count, 2),
            filler=f"images 2..{batch_size} are flat gray ({FILL}): the gradient holds no other",
        )
        if round(count) > 1:
            result.notes["mixture"] = f"the gradient sums {round(count)} images of class {target}"
        return result

    def _one_image(self, context: AttackContext, target: int) -> AttackContext:
        """The problem of one image of class ``target``: the fished gradient with the head's
        other rows masked, on an eval-mode copy of the model (notes say which statistics)."""
        observation = context.observation
        model = copy.deepcopy(context.model).eval()
        if observation.bn_mode == "train" and batchnorm_layers(model):
            if observation.bn_statistics:
                for layer_name, layer in model.net.named_modules():
                    if layer_name in observation.bn_statistics and layer.running_mean is not None:
                        mean, variance = observation.bn_statistics[layer_name]
                        layer.running_mean.copy_(mean)
                        layer.running_var.copy_(variance)
                context.notes["batchnorm"] = (
                    "replayed with the batch's BatchNorm statistics (granted), without their "
                    "coupling of the batch's images in the backward pass"
                )
            else:
                context.notes["batchnorm"] = (
                    "train-mode BatchNorm replayed with the running statistics (the batch's are "
                    "not granted): an approximation"
                )
        masks = _row_masks(model, target)
        names = [name for name, _ in model.net.named_parameters()]
        gradients = masked([observation.gradients[n] for n in names], [masks.get(n) for n in names])
        view = dataclasses.replace(
            observation,
            gradients=dict(zip(names, gradients, strict=True)),
            batch_size=1,
            labels=torch.tensor([target]),
            knows_labels=True,
            knows_batch_size=True,
            bn_mode="eval",
            bn_statistics={},
            knows_bn_statistics=False,
            clients=1,
        )
        return dataclasses.replace(context, observation=view, model=model, batch_size=1)


def _row_masks(model: ImageClassifier, target: int) -> dict[str, torch.Tensor]:
    """Masks keeping the output layer's row ``target`` (weight and bias), by parameter name."""
    name, head = output_layer(model)
    keep = torch.zeros(head.out_features)
    keep[target] = 1.0
    return {f"{name}.weight": keep[:, None], f"{name}.bias": keep}


def _other_labels(observation, model: ImageClassifier, target: int, batch_size: int):
    """The labels (B - 1,) of the images other than the reconstructed one: the known labels
    less one ``target``, or the label counts read off the fished head's bias gradient."""
    if observation.labels is not None:
        labels = observation.labels.tolist()
        if target in labels:
            labels.remove(target)
        return torch.tensor(labels[: batch_size - 1], dtype=torch.int64)
    name, head = output_layer(model)
    bias = observation.gradients[f"{name}.bias"].double()
    counts = batch_size * (1 / (head.out_features - 1) - bias)
    counts[target] = -batch_size * bias[target] - 1
    counts = counts.round().clamp_min(0).long()
    labels = torch.repeat_interleave(torch.arange(head.out_features), counts)
    padding = torch.full((max(0, batch_size - 1 - len(labels)),), target)
    return torch.cat([labels, padding])[: batch_size - 1]
