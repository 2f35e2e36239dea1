"""What the attacks of a malicious server that inserted a block share (:mod:`.imprint`,
:mod:`.trap_weights`): the requirement that the server made the model, the block's gradient, and
the batch assembled from the images read off it."""

from __future__ import annotations

from collections import Counter

import torch
from torch.func import jvp

from gradleak.attacks.base import AttackContext, Requirement, requirement
from gradleak.attacks.labels import batch_labels
from gradleak.malicious import server_record
from gradleak.malicious.blocks import inserted_layer, to_pixels

GRAY = 0.5
#: How far (pixels) outside [0, 1] a reading may reach and still look like one image.
OUTSIDE = 0.01


def made_by(server: str) -> Requirement:
    """The need for a model sent by the malicious server ``server`` (``observe --server``)."""

    @requirement(f"a model the server modified with '{server}' (observe --server {server})")
    def needs(context: AttackContext) -> str | None:
        config = context.observation.model_config
        if server_record(config, server) is not None:
            return None
        sent = (config.get("server") or {}).get("name")
        model = f"modified by {sent!r}" if sent else "an honest server's, unmodified"
        return (
            f"'{context.attack}' reads a model the malicious server '{server}' modified "
            f"(observe --server {server}); this observation's model is {model}"
        )

    return needs


def block_gradients(context: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed gradient of the server's measurement layer: ``(dW, db)``."""
    names = {id(p): n for n, p in context.model.net.named_parameters()}
    layer = inserted_layer(context.model)
    gradients = context.observation.gradients
    return gradients[names[id(layer.weight)]], gradients[names[id(layer.bias)]]


def assemble_batch(
    context: AttackContext, read: list[torch.Tensor], rest: torch.Tensor, same: float
) -> torch.Tensor:
    """The reconstructed batch as images in [0, 1]: the images ``read`` (normalized inputs,
    C H W each), then the other readings ``rest`` (R, C H W) not already among them (agreeing
    to ``same``), those inside the pixel range first, then flat gray; ``batch_size`` in all."""
    model, size = context.model, context.batch_size
    known = torch.stack(read) if read else rest.new_zeros(0, rest.shape[1])
    if len(rest):
        pool = torch.cat([known, rest])
        firsts, _, _ = distinct(pool, same)
        rest = pool[firsts[firsts >= len(known)]]
        pixels = to_pixels(model, rest)
        outside = (pixels - pixels.clamp(0, 1)).abs().flatten(1).amax(1)
        rest = rest[(outside > OUTSIDE).to(torch.uint8).argsort(stable=True)]
    images = to_pixels(model, torch.cat([known, rest])[:size]).clamp(0, 1)
    missing = size - len(images)
    if missing > 0:
        images = torch.cat([images, torch.full((missing, *model.input_shape), GRAY)])
    return images


class Replay:
    """What one image alone contributes to the block's gradient, computed by running the model
    on it: the test that a reading is one image, and what peeling subtracts.

    An image ``x`` of class ``y`` reaches neuron ``i`` with ``c_i = v_i . dl/dz`` (``z`` the
    block's output, ``v_i`` the neuron's column of ``restore``): ``dL/db_i`` gets ``c_i / B``
    and ``dL/dW_i`` gets ``c_i x / B`` when ``x`` activates ``i``.
    """

    def __init__(self, context: AttackContext):
        model = context.model
        self.model = model
        self.block, self.downstream = model.net.inserted, model.net.original
        self.directions = self.block.restore.weight.detach().T.double()  # (K, C H W)

    @classmethod
    def of(cls, context: AttackContext) -> Replay | None:
        """The replay, or None when one image cannot be run as in the batch (train-mode
        BatchNorm mixes the batch's images)."""
        model = context.model
        if model.training and model.has_batchnorm():
            return None
        return cls(context)

    def weights(self, inputs: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """``(N, classes)``: ``c`` of each normalized input (N, C H W) along its direction
        (N or 1, C H W), for every class it may have."""
        shape = (len(inputs), *self.model.input_shape)
        with torch.no_grad():
            outputs = self.block(inputs.float().view(shape))
            tangents = directions.float().view(-1, *shape[1:]).expand(shape)
            logits, along = jvp(self.downstream, (outputs,), (tangents,))
        probabilities = torch.softmax(logits.double(), 1)
        along = along.double()
        return (along * probabilities).sum(1, keepdim=True) - along

    def contribution(self, reading: torch.Tensor, label: int) -> torch.Tensor:
        """``(K,)``: ``c_i`` of one normalized input of class ``label`` at every neuron, zero
        where it does not activate the neuron."""
        x = reading.float().view(1, *self.model.input_shape)
        with torch.no_grad():
            output = self.block(x)
            active = self.block.measure(x.flatten(1))[0] > 0
        output.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(
            self.downstream(output), torch.tensor([label], device=output.device)
        )
        (gradient,) = torch.autograd.grad(loss, output)
        return (self.directions @ gradient.flatten().double()) * active.double()


def distinct(
    readings: torch.Tensor, atol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Readings (N, D) grouped when they agree to ``atol`` everywhere: the index of each group's
    first reading, how many readings each group has, and each reading's group's first."""
    if len(readings) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    close = torch.cdist(readings, readings, p=float("inf")) <= atol
    group = close.float().argmax(1)  # the first reading each one agrees with
    firsts, counts = torch.unique(group, return_counts=True)
    return firsts, counts, group


def class_labels(context: AttackContext, classes: list) -> torch.Tensor:
    """The replay's class for each image read, the batch's other labels after them."""
    recovered = batch_labels(context.observation, context.model, context.batch_size)
    known = [c for c in classes if c is not None]
    rest = Counter(recovered.tolist()) - Counter(known)
    fill = sorted(rest.elements())
    labels = (known + fill + recovered.tolist())[: context.batch_size]
    return torch.tensor(labels, dtype=torch.int64)
