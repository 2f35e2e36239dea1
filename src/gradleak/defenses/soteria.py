"""Soteria: pruning the representation layer's gradient (Sun et al., CVPR 2021).

Sun, Li, Wang, Xiao, Li, Chen, "Soteria: Provable Defense against Privacy Leakage in Federated
Learning from Representation Perspective", CVPR 2021, https://arxiv.org/abs/2012.06043;
official code https://github.com/jeremy313/Soteria.

The representation ``r`` is the input of the fully-connected layer after the feature extractor;
its weight gradient is ``dL/dW = sum_b delta_b r_b^T / B``, from which ``r`` (and through it the
image) leaks. Soteria perturbs ``r`` where the image changes most per unit of perturbation:
removing ``r_i`` moves the reconstruction by about ``||r_i (dr_i/dX)^-1||`` (the paper's
perturbation objective), which the official code approximates (its README) by the criterion

    c_i = ||r_i|| / ||d r_i / d X||,

and the features with the *largest* ``c_i`` are pruned (the code ranks ``1/c_i`` and removes the
smallest ones): their columns of the layer's weight gradient are set to zero. Only that one
gradient changes; every other layer, the layer's bias included, is sent as computed.

Batches: the official code scores a batch by summing ``1/c_bi`` over its images. Here
``c_bi = |r_bi| / ||d r_bi / d X||`` is computed per image (X the whole batch, so that
train-mode BatchNorm's coupling of the images counts; without it only ``x_b`` moves ``r_b``)
and summed over the batch, ``c_i = sum_b c_bi``: the sum of the per-image displacements the
pruning causes. At batch one both rankings coincide. ``r_bi = 0`` counts 0 (nothing to hide);
``r_bi != 0`` with a zero derivative counts as infinite (pruned first).

Default ``prune=0.6``: the official README reproduces the paper's CIFAR-10 figure (GS attack,
ConvNet) with ``--pruning_rate=60``; its DLG notebook (LeNet) prunes 1%.
"""

from __future__ import annotations

import torch
from torch import nn

from gradleak.defenses.client import ClientBatch, Gradients
from gradleak.defenses.registry import register_defense
from gradleak.errors import GradleakError

# Floats of the Jacobian chunk held at once by one batched backward (64 MiB).
_CHUNK_FLOATS = 2**24


@register_defense(
    "soteria", "update", "zero the representation layer's gradient columns that leak most (Soteria)"
)
def soteria(
    gradients: Gradients,
    client: ClientBatch,
    *,
    prune: float = 0.6,
    layer: str | None = None,
    probes: int = 0,
) -> tuple[Gradients, dict]:
    """Zero the ``prune`` fraction of columns of ``layer``'s weight gradient (default: the last
    ``nn.Linear`` of the network) whose representation features have the largest Soteria
    criterion on the client's batch (module docstring). ``client.model`` is used as given (the
    server's weights, in the client's BatchNorm mode) and left unchanged.

    ``probes=0`` (default): the exact criterion, one backward pass per feature (batched).
    ``probes=K``: the norms ``||d r_bi / d X||`` estimated from ``K`` random forward-mode
    probes, ``E_v[(J v)_i^2] = ||J_i||^2`` for Rademacher ``v`` (not in the paper; relative error
    of the norm about ``1/sqrt(2K)``), drawn from the client's generator: for wide layers such as
    ConvNet's 2304 features, whose exact Jacobian costs minutes per step on a CPU.

    Updates (FedAvg, several local steps): the criterion is computed once, at the server's
    weights on the client's whole batch, and the same columns of the pseudo-gradient's layer are
    zeroed. Facts: ``layer``, ``features``, ``pruned`` (how many) and ``pruned_fraction``."""
    if isinstance(prune, bool) or not isinstance(prune, int | float) or not 0 <= prune <= 1:
        raise GradleakError(f"soteria prune must be a fraction in [0, 1], got {prune!r}")
    name, module = representation_layer(client.model, layer)
    key = f"{name}.weight"
    if key not in gradients:
        raise GradleakError(f"soteria: no gradient for {key!r} in what the client sends")
    if client.images.ndim != 4 or len(client.images) == 0:
        raise GradleakError(
            "soteria needs the client's images to score the representation (an observation "
            "without ground truth cannot be defended after the fact)"
        )
    features = module.in_features
    count = round(prune * features)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise GradleakError(f"soteria probes must be an integer >= 0 (0: exact), got {probes!r}")
    pruned = dict(gradients)
    if count > 0:
        scores = soteria_scores(
            client.model, client.images, module, client.bn_mode, probes, client.generator
        )
        columns = scores.topk(count).indices
        weight = gradients[key].clone()
        weight[:, columns] = 0
        pruned[key] = weight
    facts = {
        "layer": name,
        "features": features,
        "pruned": count,
        "pruned_fraction": count / features,
    }
    return pruned, facts


def representation_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the ``nn.Linear`` Soteria defends: ``layer`` (a module name in
    ``model.net``), by default the network's last ``nn.Linear``."""
    net = getattr(model, "net", model)
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise GradleakError("soteria defends a fully-connected layer; the model has none")
    if layer is None:
        return linears[-1]
    found = dict(linears).get(layer.removeprefix("net."))
    if found is None:
        names = ", ".join(n for n, _ in linears)
        raise GradleakError(f"soteria layer {layer!r} is not an nn.Linear of the model ({names})")
    return layer.removeprefix("net."), found


def soteria_scores(
    model: nn.Module,
    images: torch.Tensor,
    module: nn.Linear,
    bn_mode: str = "train",
    probes: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(F,)`` Soteria criterion ``sum_b |r_bi| / ||d r_bi / d X||`` of ``module``'s input
    features ``r`` on the batch ``X = images`` (``model`` in ``bn_mode``; its mode and buffers
    are restored).

    Exact (``probes=0``): batched backward passes over the features (``is_grads_batched``), in
    chunks of at most 64 MiB; one per feature, or one per (image, feature) where train-mode
    BatchNorm couples the batch. Else the squared norms are the mean of ``(J v)^2`` over
    ``probes`` Rademacher tangents ``v`` of the whole batch (``torch.func.jvp`` under ``vmap``),
    whatever the coupling."""
    coupled = bn_mode == "train" and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    )
    with _untouched(model, bn_mode):
        if probes:
            r, norms = _probed_norms(model, images, module, probes, generator)
        else:
            r, norms = _exact_norms(model, images, module, coupled)
    size = r.detach().abs().double().cpu()
    per_image = torch.where(size > 0, size / norms, torch.zeros_like(size))
    return per_image.sum(0)


def _exact_norms(
    model: nn.Module, images: torch.Tensor, module: nn.Linear, coupled: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        r = _features(model, module)(x)
    batch, features = r.shape
    norms = torch.empty(batch, features, dtype=torch.float64)
    chunk = max(1, _CHUNK_FLOATS // x.numel())
    if not coupled:  # image b only moves r_b: one backward per feature serves the batch
        for start in range(0, features, chunk):
            i = torch.arange(start, min(start + chunk, features))
            seeds = torch.zeros(len(i), batch, features, dtype=r.dtype, device=r.device)
            seeds[torch.arange(len(i)), :, i] = 1
            grads = _batched_backward(r, x, seeds)
            norms[:, i] = grads.flatten(2).norm(dim=2).T.double().cpu()
    else:  # BatchNorm couples the batch: one backward per (image, feature)
        pairs = batch * features
        for start in range(0, pairs, chunk):
            p = torch.arange(start, min(start + chunk, pairs))
            b, i = p // features, p % features
            seeds = torch.zeros(len(p), batch, features, dtype=r.dtype, device=r.device)
            seeds[torch.arange(len(p)), b, i] = 1
            grads = _batched_backward(r, x, seeds)
            norms[b, i] = grads.flatten(1).norm(dim=1).double().cpu()
    return r, norms


def _probed_norms(
    model: nn.Module,
    images: torch.Tensor,
    module: nn.Linear,
    probes: int,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    from torch.func import jvp, vmap

    x = images.detach()
    forward = _features(model, module)
    signs = torch.randint(0, 2, (probes, *x.shape), generator=generator).to(x) * 2 - 1
    with torch.no_grad():
        r = forward(x)
    squares = torch.zeros(r.shape, dtype=torch.float64)
    chunk = max(1, _CHUNK_FLOATS // x.numel())
    for start in range(0, probes, chunk):
        tangents = signs[start : start + chunk]
        moved = vmap(lambda v: jvp(forward, (x,), (v,))[1])(tangents)
        squares += moved.double().pow(2).sum(0).cpu()
    return r, (squares / probes).sqrt()


def _batched_backward(r: torch.Tensor, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """``(K, *x.shape)``: the vector-Jacobian products ``seeds[k]^T dr/dx``."""
    (grads,) = torch.autograd.grad(r, x, seeds, retain_graph=True, is_grads_batched=True)
    return grads


def _features(model: nn.Module, module: nn.Linear):
    """``x -> r``, the (B, F) input of ``module`` when ``model`` runs on ``x``."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
        try:
            model(x)
        finally:
            handle.remove()
        if len(seen) != 1 or seen[0].ndim != 2:
            shapes = [list(s.shape) for s in seen]
            raise GradleakError(
                "soteria needs a layer called once per forward pass on (B, features) inputs; "
                f"got inputs of shapes {shapes}"
            )
        return seen[0]

    return forward


class _untouched:
    """Context manager: ``model`` in ``bn_mode`` inside, its BatchNorm layers normalizing by the
    batch's statistics without updating their running ones in train mode; its mode, flags and
    buffers as they were after."""

    def __init__(self, model: nn.Module, bn_mode: str):
        self.model, self.bn_mode = model, bn_mode

    def __enter__(self):
        self.training = self.model.training
        self.buffers = {k: v.clone() for k, v in self.model.named_buffers(remove_duplicate=False)}
        self.norms = [
            (m, m.track_running_stats)
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.model.train(self.bn_mode == "train")
        if self.bn_mode == "train":  # same output, no in-place update (torch.func needs that)
            for m, _ in self.norms:
                m.track_running_stats = False
        return self

    def __exit__(self, *exc):
        self.model.train(self.training)
        for m, tracked in self.norms:
            m.track_running_stats = tracked
        with torch.no_grad():
            for k, v in self.model.named_buffers(remove_duplicate=False):
                v.copy_(self.buffers[k])
        return False
