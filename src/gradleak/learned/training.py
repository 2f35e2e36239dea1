"""Training a learned inverter (Learning to Invert, Wu et al., UAI 2023) on auxiliary images.

The training pairs are (hashed gradient of an auxiliary batch, that batch) for one fixed model.
Without train-mode BatchNorm the batch gradient is the mean of the per-sample gradients, and the
sketch is linear, so every auxiliary image's hashed gradient is computed once (``vmap(grad)`` over
chunks) and a batch's hashed gradient is the mean of its members' (exact, not an approximation).
With train-mode BatchNorm (batch statistics couple the samples) every batch's gradient is computed
directly at every step. Horizontal flips double the pool of images (on by default).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gradleak.data.auxiliary import check_disjoint
from gradleak.data.imageset import ImageSet
from gradleak.devices import module_device, resolve_device
from gradleak.errors import GradleakError
from gradleak.gradient.simulation import ClientSimulator
from gradleak.learned.hashing import FeatureHasher
from gradleak.learned.inverter import (
    KIND,
    GradientEncoder,
    Inverter,
    InverterNet,
    assignment_loss,
    inverter_tensors,
)
from gradleak.learning import default_checkpoint, save_artifact, train
from gradleak.learning.trainer import TrainProgress
from gradleak.models import ImageClassifier
from gradleak.models.weights import model_fingerprint, weight_norm
from gradleak.records import json_safe

EVAL_BATCHES = 512


def train_inverter(
    model: ImageClassifier,
    images: ImageSet,
    *,
    out: str | os.PathLike,
    steps: int,
    batch_sizes: tuple[int, int] = (1, 1),
    hash_dim: int = 2048,
    hidden: int = 1024,
    lr: float = 1e-3,
    seed: int = 0,
    hash_seed: int | None = None,
    minibatch: int = 64,
    flip: bool = True,
    held_out: int = 256,
    checkpoint: str | os.PathLike | bool | None = None,
    checkpoint_every: int = 500,
    checkpoint_seconds: float | None = 60.0,
    progress: TrainProgress | None = None,
    private: ImageSet | torch.Tensor | None = None,
    device: str | torch.device | None = None,
) -> Inverter:
    """Train an inverter for ``model`` (architecture, weights and BatchNorm mode as given).

    Args:
        model: the attacked model; ``model.training`` decides the BatchNorm mode of the gradients.
        images: the attacker's auxiliary data (see :func:`gradleak.data.auxiliary_images`).
        out: the inverter file (``.safetensors``, with a ``.json`` card beside it).
        steps: optimizer steps (Adam, cosine-decayed step size from ``lr``).
        batch_sizes: the range ``(low, high)`` of client batch sizes trained for (inclusive).
        hash_dim, hash_seed: the count sketch's size d and seed (default: ``seed``).
        hidden: width of the MLP's two hidden layers.
        minibatch: client batches per optimizer step.
        flip: also train on horizontally flipped images.
        held_out: auxiliary images kept out of training for the scores on the card.
        checkpoint: resumable checkpoint (default ``<out stem>.ckpt.safetensors``; False: none);
            written every ``checkpoint_every`` steps, every ``checkpoint_seconds`` of wall
            time (None: by steps only), on Ctrl-C and at the end; removed once ``out`` is
            written.
        progress: ``progress(done, total, {"mse": ..., ...})`` after every step.
        private: the images attacked later; training refuses auxiliary copies of them.
        device: where the gradients are computed and the inverter trains (``"auto"``,
            ``"cuda"``, ...; None: the CPU); random draws come from CPU generators whatever it is.

    Returns:
        The trained :class:`Inverter` (also written to ``out``), on the CPU.
    """
    device = resolve_device(device)
    low, high = (int(b) for b in batch_sizes)
    if not 1 <= low <= high:
        raise GradleakError(
            f"batch_sizes must be (low, high) with 1 <= low <= high, got {batch_sizes}"
        )
    out = Path(out)
    if out.suffix != ".safetensors":
        raise GradleakError(f"inverter files end in .safetensors, got {out}")
    if tuple(images.images.shape[1:]) != tuple(model.input_shape):
        raise GradleakError(
            f"auxiliary images of shape {list(images.images.shape[1:])} do not fit model "
            f"'{model.config['name']}' which takes {list(model.input_shape)}"
        )
    num_classes = model.config["num_classes"]
    if len(images) and (images.labels.min() < 0 or images.labels.max() >= num_classes):
        raise GradleakError(f"auxiliary labels must lie in [0, {num_classes})")
    held_out = min(int(held_out), len(images) // 5)
    if len(images) - held_out < high:
        raise GradleakError(
            f"{len(images)} auxiliary images are too few for batches of up to {high}"
        )
    if private is not None:
        check_disjoint(images.images, private)
    if checkpoint is None:
        checkpoint = default_checkpoint(out)
    elif checkpoint is False:
        checkpoint = None

    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(False)
    bn_mode = "train" if model.training else "eval"
    per_sample = not (model.training and model.has_batchnorm())
    weights = {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}
    model = model.to(device)
    split = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    train_set, eval_set = images.subset(split[held_out:]), images.subset(split[:held_out])

    names = [n for n, _ in model.net.named_parameters()]
    sizes = [p.numel() for _, p in model.net.named_parameters()]
    encoder = GradientEncoder(
        names, sizes, FeatureHasher(hash_dim, seed if hash_seed is None else hash_seed)
    )
    source_type = _PerSampleGradients if per_sample else _BatchGradients
    logging.getLogger("gradleak").info(
        f"inverter: hashing the gradients of {len(images)} auxiliary images"
        if per_sample
        else "inverter: fitting the gradient encoder on sampled batches"
    )
    source = source_type(model, encoder, train_set, (low, high), flip, fit=True)
    evaluation = source_type(model, encoder, eval_set, (low, high), flip=False, fit=False)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InverterNet(encoder.features, hidden, model.input_shape, high)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(index: int, generator: torch.Generator) -> dict[str, float]:
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * index / steps))
        hashed, targets, batch = source.sample(minibatch, generator)
        predicted, logits = net(encoder.normalize(hashed))
        loss, _ = assignment_loss(predicted, targets, batch)
        values = {"mse": float(loss.detach())}
        if high > low:
            size_loss = nn.functional.cross_entropy(logits, batch - 1)
            loss = loss + size_loss
            values["size_ce"] = float(size_loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return values

    config = {
        "model_config": model.config,
        "model_fingerprint": model_fingerprint(weights),
        "bn_mode": bn_mode,
        "aux_ids_sha256": hashlib.sha256("\n".join(images.ids).encode()).hexdigest(),
        "batch_sizes": [low, high],
        "hash_dim": hash_dim,
        "hash_seed": encoder.hasher.seed,
        "hidden": hidden,
        "lr": lr,
        "minibatch": minibatch,
        "flip": flip,
        "held_out": held_out,
        "steps": steps,  # the step-size schedule depends on it
    }
    start = time.perf_counter()
    log = train(
        step,
        modules={"inverter": net},
        optimizers={"adam": optimizer},
        steps=steps,
        seed=seed,
        config=config,
        checkpoint=checkpoint,
        every=checkpoint_every,
        progress=progress,
        every_seconds=checkpoint_seconds,
    )
    card = {
        **config,
        "model_weight_norm": weight_norm(weights),
        "has_batchnorm": model.has_batchnorm(),
        "parameters": {"names": names, "sizes": sizes},
        "image_shape": list(model.input_shape),
        "aux": {
            "source": images.source,
            "size": len(images),
            "trained_on": len(train_set),
            "held_out": len(eval_set),
        },
        "classes": {
            "names": images.class_names,
            "present": sorted({int(c) for c in images.labels.tolist()}),
        },
        "gradients": "per-sample hashes averaged" if per_sample else "batch gradients",
        "seed": seed,
        "final": {k: v for k, v in log[-1].items() if k not in ("step", "seconds")},
        "train_seconds": log[-1]["seconds"],
    }
    inverter = Inverter(net, encoder, json_safe(card), weights)
    if len(eval_set):
        card["held_out_scores"] = _score(inverter, evaluation, seed)
    inverter.to("cpu")  # what training returns (and saves) lives on the CPU
    card["seconds"] = time.perf_counter() - start
    inverter.card = json_safe({**card, "kind": KIND})
    save_artifact(out, inverter_tensors(inverter), card, kind=KIND)
    if checkpoint is not None:  # the artifact holds what training was for
        Path(checkpoint).unlink(missing_ok=True)
    return inverter


@torch.no_grad()
def _score(inverter: Inverter, evaluation, seed: int) -> dict[str, float]:
    """MSE, PSNR (after the optimal assignment) and batch-size accuracy on held-out batches."""
    generator = torch.Generator().manual_seed(seed + 7919)
    errors, gray, correct, total = [], [], 0, 0
    for _ in range(EVAL_BATCHES // 128):
        hashed, targets, sizes = evaluation.sample(128, generator)
        predicted, logits = inverter.net(inverter.encoder.normalize(hashed))
        _, order = assignment_loss(predicted, targets, sizes)
        for i, size in enumerate(sizes.tolist()):
            matched = predicted[i, order[i, :size].to(predicted.device)]
            errors.append((matched - targets[i, :size]).pow(2).flatten(1).mean(1))
            gray.append((targets[i, :size] - 0.5).pow(2).flatten(1).mean(1))
        correct += int((inverter._mask(logits).argmax(-1) + 1 == sizes).sum())
        total += len(sizes)
    mse = torch.cat(errors)
    return {
        "batches": total,
        "mse": float(mse.mean()),
        "psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()),
        "gray_mse": float(torch.cat(gray).mean()),
        "batch_size_accuracy": correct / total,
    }


class _PerSampleGradients:
    """Hashed per-sample gradients of a pool of images, computed once; batches average them."""

    def __init__(self, model, encoder, images: ImageSet, batch_sizes, flip: bool, fit: bool):
        self.images, self.flip, self.batch_sizes = images.images, flip, batch_sizes
        self.device = device = module_device(model)
        pool_images = [images.images, images.images.flip(-1)] if flip else [images.images]
        labels = images.labels
        params = {f"net.{n}": p.detach() for n, p in model.net.named_parameters()}

        def loss(params, image, label):
            logits = functional_call(model, params, (image[None],))
            return nn.functional.cross_entropy(logits, label[None])

        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
        chunk = max(1, min(512, 2**23 // sum(encoder.sizes)))

        def flat_gradients(start: int, pool: torch.Tensor) -> torch.Tensor:
            part = slice(start, start + chunk)
            grads = per_sample(params, pool[part].to(device), labels[part].to(device))
            return torch.cat([grads[f"net.{n}"].flatten(1) for n in encoder.names], dim=1)

        if fit:  # the encoder's statistics come from the training pool
            flat = flat_gradients(0, pool_images[0])
            encoder.layer_scale = _layer_scale(flat, encoder.sizes)
        self.hashes = torch.cat(
            [
                encoder.hash(flat_gradients(start, pool))
                for pool in pool_images
                for start in range(0, len(pool), chunk)
            ]
        )
        if fit:
            encoder.log_norm = _log_norm_statistics(self, torch.Generator().manual_seed(0))

    def sample(self, count: int, generator: torch.Generator):
        """``count`` batches: hashed gradients (N, d), images (N, Bmax, C, H, W), sizes (N,)."""
        drawn = _draw(self.images, self.flip, self.batch_sizes, count, generator)
        members, sizes, targets = (t.to(self.device) for t in drawn)
        mask = torch.arange(members.shape[1], device=self.device) < sizes[:, None]
        hashed = (self.hashes[members] * mask[..., None]).sum(1) / sizes[:, None]
        return hashed, targets, sizes


class _BatchGradients:
    """Batch gradients computed at every step (train-mode BatchNorm couples the samples)."""

    def __init__(self, model, encoder, images: ImageSet, batch_sizes, flip: bool, fit: bool):
        self.images, self.labels, self.flip = images.images, images.labels, flip
        self.batch_sizes, self.encoder = batch_sizes, encoder
        self.device = module_device(model)
        self.simulator = ClientSimulator(model)
        if fit:
            generator = torch.Generator().manual_seed(0)
            flat = self._flat(*_draw(self.images, False, batch_sizes, 16, generator))
            encoder.layer_scale = _layer_scale(flat, encoder.sizes)
            encoder.log_norm = _log_norm_statistics(self, torch.Generator().manual_seed(0), 64)

    def _flat(self, members, sizes, targets) -> torch.Tensor:
        labels = self.labels[members % len(self.images)]
        flat = torch.empty(len(sizes), sum(self.encoder.sizes), device=self.device)
        for size in sizes.unique().tolist():
            rows = (sizes == size).nonzero().flatten()
            batch = targets[rows, :size].to(self.device), labels[rows, :size].to(self.device)
            with torch.no_grad():
                grads = self.simulator.gradients(*batch)
            flat[rows.to(self.device)] = torch.cat([g.flatten(1) for g in grads], dim=1)
        return flat

    def sample(self, count: int, generator: torch.Generator):
        drawn = _draw(self.images, self.flip, self.batch_sizes, count, generator)
        hashed = self.encoder.hash(self._flat(*drawn))
        return hashed, drawn[2].to(self.device), drawn[1].to(self.device)


def _draw(images: torch.Tensor, flip: bool, batch_sizes, count: int, generator):
    """Batch members (N, Bmax) (index i >= n: image i - n flipped), sizes (N,), images.

    Members are drawn independently and uniformly (a repeat inside a batch is as likely as
    B^2 / 2n); rows hold Bmax members, of which the first ``sizes[i]`` form the batch.
    """
    low, high = batch_sizes
    pool = len(images) * (2 if flip else 1)
    sizes = torch.randint(low, high + 1, (count,), generator=generator)
    members = torch.randint(0, pool, (count, high), generator=generator)
    targets = images[members % len(images)]
    if flip:
        flipped = (members >= len(images))[..., None, None, None]
        targets = torch.where(flipped, targets.flip(-1), targets)
    return members, sizes, targets


def _layer_scale(flat: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """1 / RMS of every parameter tensor's gradient entries over the rows of ``flat``."""
    parts = flat.split(sizes, dim=1)
    return torch.stack([1 / p.pow(2).mean().sqrt().clamp_min(1e-30) for p in parts])


def _log_norm_statistics(source, generator, count: int = 1024) -> torch.Tensor:
    norms = source.sample(count, generator)[0].norm(dim=1).clamp_min(1e-30).log()
    return torch.stack([norms.mean(), norms.std().clamp_min(1e-3)])
