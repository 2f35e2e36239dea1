"""DP-SGD, computed by Opacus: the client clips every image's gradient and adds Gaussian noise.

Abadi et al. 2016, "Deep Learning with Differential Privacy" (CCS, https://arxiv.org/abs/1607.00133),
Algorithm 1: per-sample gradients ``g_i`` are clipped to ``g_i / max(1, |g_i| / C)`` (line 6),
summed, noised with ``N(0, sigma^2 C^2 I)`` and divided by the batch size (line 7). The ``dp``
defense runs exactly that step through Opacus (Yousefpour et al. 2021,
https://arxiv.org/abs/2109.12298): its ``GradSampleModule`` computes the per-sample gradients of a
copy of the client's model and its ``DPOptimizer`` clips, noises and averages them; the server sees
the ``p.grad`` Opacus's optimizer applies (one gradient), or, for a FedAvg update, the
pseudo-gradient ``w_server - w_client`` after local training with Opacus's optimizer.

The privacy guarantee is Opacus's accountant's: ``epsilon`` at ``delta`` after ``steps``
applications of the subsampled Gaussian mechanism with noise ``sigma`` and sampling rate ``q``
(batch size over the client's data set size; the accountants assume Poisson sampling at rate
``q``, as Opacus's own training does). :func:`dp_epsilon` and its inverse
:func:`noise_for_epsilon` give the same numbers outside a client step.

Install with ``pip install "gradleak[dp]"``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from numbers import Integral, Real

import torch
from torch import nn

from gradleak.defenses.client import ClientBatch, Gradients
from gradleak.defenses.registry import register_defense
from gradleak.errors import GradleakError

#: Opacus's privacy accountants: Renyi DP (Mironov 2017), privacy random variables (Gopi et al.
#: 2021) and Gaussian DP (Dong et al. 2019; Opacus calls it experimental).
ACCOUNTANTS = ("rdp", "prv", "gdp")


@register_defense(
    "dp",
    "step",
    "DP-SGD by Opacus: per-sample clipping to C, noise N(0, sigma^2 C^2) (Abadi et al. 2016)",
    extra="dp",
)
def dp(
    client: ClientBatch,
    *,
    max_grad_norm: float,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float = 1e-5,
    sample_rate: float | None = None,
    dataset_size: int | None = None,
    steps: int | None = None,
    accountant: str = "rdp",
) -> tuple[Gradients, float, dict]:
    """The client's DP-SGD step (Abadi et al. 2016, Alg. 1), computed by Opacus.

    Args:
        max_grad_norm: C, the per-sample clipping norm.
        noise_multiplier: sigma; the noise of the summed gradient has std ``sigma * C``, that of
            the averaged one ``sigma * C / B``. Give it or ``target_epsilon``.
        target_epsilon: the epsilon to spend instead: sigma is then Opacus's
            ``get_noise_multiplier`` for it (the recorded ``epsilon`` is at most this).
        delta: the delta of (epsilon, delta)-DP.
        sample_rate: q, the local batch size over the client's data set size. Give it or
            ``dataset_size`` (then q = batch size / dataset_size); there is no default, since
            epsilon depends on it.
        steps: the steps the accountant counts (e.g. the whole training's); default: the steps
            of this observation (1 for a gradient, the local steps for an update).
        accountant: ``"rdp"``, ``"prv"`` or ``"gdp"`` (Opacus's accountants).

    Without local training the observed gradient is Opacus's ``p.grad`` after its optimizer's
    ``pre_step`` (clip, sum, noise, divide by B); with it (``client.local``) the client runs its
    local steps (``client.order``) with Opacus's ``DPOptimizer`` around the torch optimizer of
    :func:`gradleak.threat.local_training.train_locally` (``LocalTraining.make_optimizer``), each
    step averaged over its own batch, and sends ``w_server - w_client``. The noise is drawn from
    a generator seeded by the case (Opacus's ``secure_mode`` off). Soft (B, C) targets, e.g.
    after MixUp, are fine.

    BatchNorm: in train mode it normalizes an image by its batch, so no image has a gradient of
    its own and clipping bounds nothing: Opacus refuses it, and so does ``dp``. In eval mode
    (``bn_mode="eval"``) BatchNorm is a fixed per-channel affine map; ``dp`` then replaces each
    layer by the same map with the running statistics held as constants (Opacus refuses layers
    with buffers), whose weight and bias get their per-sample gradients from Opacus's functorch
    sampler: the defended gradient is exact for every parameter.

    Facts recorded: ``epsilon`` (Opacus's accountant for sigma, q, steps, delta), ``delta``,
    ``noise_multiplier``, ``sample_rate``, ``steps``, ``accountant``, and over the client's
    steps the fraction of per-sample gradients that were clipped (``clipped``) and their median
    norm (``grad_norm_median``).
    """
    _opacus()
    batch = len(client.images) if client.local is None else client.local.batch_size
    q = _sample_rate(sample_rate, dataset_size, batch)
    local_steps = 1 if client.local is None else len(client.order or [])
    if client.local is not None and local_steps == 0:
        raise GradleakError("dp: the client's local training has no steps (client.order)")
    steps = local_steps if steps is None else _positive_int("steps", steps)
    _check_common(max_grad_norm, delta, accountant)
    sigma = _noise(noise_multiplier, target_epsilon, q, steps, delta, accountant)
    module, params = _private_copy(client)
    device = next(iter(params.values())).device
    seed = int(torch.randint(2**62, (1,), generator=client.generator))
    noise_generator = torch.Generator(device=device).manual_seed(seed)
    norms: list[torch.Tensor] = []

    if client.local is None:
        optimizer = _dp_optimizer(
            torch.optim.SGD(list(params.values()), lr=1.0),
            sigma,
            max_grad_norm,
            len(client.images),
            noise_generator,
            norms,
        )
        loss = client.loss(module(client.images))
        _backward(loss)
        optimizer.pre_step()
        gradients = {name: p.grad.detach().clone() for name, p in params.items()}
        first_loss = float(loss.detach())
    else:
        optimizer = _dp_optimizer(
            client.local.make_optimizer(list(params.values())),
            sigma,
            max_grad_norm,
            batch,
            noise_generator,
            norms,
        )
        losses = []
        for indices in client.order:
            index = torch.tensor(indices, device=client.images.device)
            optimizer.zero_grad()
            optimizer.expected_batch_size = len(indices)  # this step's own batch
            logits = module(client.images.index_select(0, index))
            loss = client.loss(logits, client.targets.index_select(0, index))
            _backward(loss)
            optimizer.step()
            losses.append(float(loss.detach()))
        server = dict(client.model.net.named_parameters())
        gradients = {
            name: (server[name].detach() - p.detach()).clone() for name, p in params.items()
        }
        first_loss = losses[0]
    all_norms = torch.cat(norms)
    facts = {
        "epsilon": dp_epsilon(sigma, q, steps, delta, accountant),
        "delta": delta,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "accountant": accountant,
        "clipped": float((all_norms > max_grad_norm).double().mean()),
        "grad_norm_median": float(all_norms.median()),
    }
    return gradients, first_loss, facts


def dp_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Epsilon of ``steps`` DP-SGD steps with noise ``noise_multiplier`` and sampling rate
    ``sample_rate``, at ``delta``, by Opacus's ``accountant`` (``inf`` without noise)."""
    _check_accounting(sample_rate, steps, delta, accountant)
    if not (isinstance(noise_multiplier, Real) and 0 <= noise_multiplier < math.inf):
        raise GradleakError(f"dp: noise_multiplier must be >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    return _epsilon(float(noise_multiplier), float(sample_rate), int(steps), delta, accountant)


@functools.lru_cache(maxsize=256)
def _epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    """Opacus's accountant, memoized: every step of a training asks the same (0.45 s each)."""
    accounting = _opacus().accountants.create_accountant(accountant)
    accounting.history = [(sigma, q, steps)]
    with _quiet_accountant():
        return float(accounting.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_accountant():
    """Opacus's RDP accountant warns whenever its best order is the largest one it tries (a
    weak-privacy setting): the epsilon it returns is still a valid bound."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def noise_for_epsilon(
    epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The noise multiplier sigma whose ``steps`` steps at ``sample_rate`` spend at most
    ``epsilon`` at ``delta`` (Opacus's ``get_noise_multiplier``, to within 0.01 in epsilon)."""
    _check_accounting(sample_rate, steps, delta, accountant)
    if not (isinstance(epsilon, Real) and 0 < epsilon < math.inf):
        raise GradleakError(f"dp: epsilon must be a positive number, got {epsilon}")
    return _sigma_for(float(epsilon), float(sample_rate), int(steps), float(delta), accountant)


@functools.lru_cache(maxsize=256)
def _sigma_for(epsilon: float, sample_rate: float, steps: int, delta: float, accountant: str):
    """:func:`noise_for_epsilon` after its checks, memoized (a training asks it every step)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet_accountant():
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=int(steps),
                    accountant=accountant,
                )
            )
    except ValueError as err:
        raise GradleakError(
            f"dp: no noise multiplier reaches epsilon {epsilon} at delta {delta} ({err})"
        ) from None


# ---------------------------------------------------------------------- Opacus's step
def _opacus():
    try:
        import opacus
        import opacus.accountants
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != "opacus":
            raise
        raise GradleakError(
            'the dp defense computes DP-SGD with Opacus: pip install "gradleak[dp]"'
        ) from None
    return opacus


def _private_copy(client: ClientBatch):
    """A deep copy of the client's model in its mode, eval-mode BatchNorm made Opacus-ready,
    wrapped in Opacus's GradSampleModule, and the copy's parameters by name (in ``.net``)."""
    from opacus import GradSampleModule

    model = copy.deepcopy(client.model)
    train = client.bn_mode == "train"
    batchnorms = [
        name
        for name, m in model.net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if batchnorms and train:
        raise GradleakError(
            "dp needs a model without train-mode BatchNorm: train-mode BatchNorm normalizes "
            "each image by its batch's statistics, so no image has a gradient of its own to "
            f"clip (Opacus refuses it; layers {batchnorms[:3]}); observe with bn_mode='eval' "
            "(the running statistics, supported) or use a model without BatchNorm"
        )
    for name in batchnorms:
        _replace(model.net, name, _frozen(model.net.get_submodule(name), name))
    model.train(train)
    if not train:  # Opacus records only layers in train mode; these compute the same in both
        for layer in model.modules():
            if type(layer) in GradSampleModule.GRAD_SAMPLERS or isinstance(layer, FrozenBatchNorm):
                layer.training = True
    model.zero_grad(set_to_none=True)
    try:
        module = GradSampleModule(model, loss_reduction="mean", strict=True)
    except NotImplementedError as err:
        raise GradleakError(
            f"dp: Opacus cannot compute this model's per-sample gradients: {err}"
        ) from None
    params = dict(model.net.named_parameters())
    frozen = [name for name, p in params.items() if not p.requires_grad]
    if frozen:
        raise GradleakError(f"dp: parameters {frozen[:3]} do not require gradients")
    return module, params


def _backward(loss: torch.Tensor) -> None:
    """``loss.backward()`` through Opacus's hooks (they fill ``p.grad_sample``)."""
    with warnings.catch_warnings():  # the images do not require gradients: nothing to warn
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        try:
            loss.backward()
        except ValueError as err:
            if "No activations detected" not in str(err):
                raise
            raise GradleakError(
                f"dp: Opacus recorded no input of a layer ({err}); in eval mode it samples only "
                "its own layer types (Linear, Conv, norms): observe with bn_mode='train' or "
                "use such layers"
            ) from None


def _dp_optimizer(optimizer, sigma, max_grad_norm, batch, generator, norms):
    """Opacus's DPOptimizer around ``optimizer``; every step appends its per-sample gradient
    norms (before clipping) to ``norms``."""
    from opacus.optimizers import DPOptimizer

    private = DPOptimizer(
        optimizer,
        noise_multiplier=float(sigma),
        max_grad_norm=float(max_grad_norm),
        expected_batch_size=int(batch),
        loss_reduction="mean",
        generator=generator,
        secure_mode=False,
    )

    def record(opt) -> None:
        per_param = [g.reshape(len(g), -1).norm(2, dim=-1) for g in opt.grad_samples]
        norms.append(torch.stack(per_param, dim=1).norm(2, dim=1).detach().cpu())

    private.attach_step_hook(record)
    return private


class FrozenBatchNorm(nn.Module):
    """Eval-mode BatchNorm with its running statistics held as constants, not buffers: the same
    map ``(x - mean) / sqrt(var + eps) * weight + bias``, whose ``weight`` and ``bias`` (the
    original layer's parameters) Opacus's functorch sampler differentiates per sample."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.weight = layer.weight
        self.bias = layer.bias
        self.mean = layer.running_mean.detach().clone()
        self.var = layer.running_var.detach().clone()
        self.eps = layer.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(
            x, self.mean, self.var, self.weight, self.bias, training=False, eps=self.eps
        )


def _frozen(layer: nn.modules.batchnorm._BatchNorm, name: str) -> nn.Module:
    if layer.running_mean is None or layer.running_var is None:
        raise GradleakError(
            f"dp: BatchNorm layer {name!r} keeps no running statistics, so it normalizes by the "
            "batch even in eval mode: no image has a gradient of its own"
        )
    return FrozenBatchNorm(layer)


def _replace(root: nn.Module, name: str, replacement: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, replacement)


# ---------------------------------------------------------------------- checks
def _sample_rate(sample_rate, dataset_size, batch: int) -> float:
    if (sample_rate is None) == (dataset_size is None):
        raise GradleakError(
            "dp needs exactly one of sample_rate (q = batch size / the client's data set size) "
            "or dataset_size (the client's number of images): epsilon depends on it"
        )
    if dataset_size is not None:
        size = _positive_int("dataset_size", dataset_size)
        if size < batch:
            raise GradleakError(
                f"dp: dataset_size {size} is smaller than the batch of {batch} images"
            )
        return batch / size
    if not (isinstance(sample_rate, Real) and 0 < sample_rate <= 1):
        raise GradleakError(f"dp: sample_rate must lie in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def _noise(noise_multiplier, target_epsilon, q, steps, delta, accountant) -> float:
    if (noise_multiplier is None) == (target_epsilon is None):
        raise GradleakError(
            "dp needs exactly one of noise_multiplier (sigma) or target_epsilon (from which "
            "Opacus derives sigma)"
        )
    if target_epsilon is not None:
        return noise_for_epsilon(target_epsilon, q, steps, delta, accountant)
    if not (isinstance(noise_multiplier, Real) and 0 <= noise_multiplier < math.inf):
        raise GradleakError(f"dp: noise_multiplier must be >= 0, got {noise_multiplier!r}")
    return float(noise_multiplier)


def _check_common(max_grad_norm, delta, accountant) -> None:
    if not (isinstance(max_grad_norm, Real) and 0 < max_grad_norm < math.inf):
        raise GradleakError(
            f"dp: max_grad_norm (C) must be a positive number, got {max_grad_norm!r}"
        )
    _check_privacy(delta, accountant)


def _check_privacy(delta, accountant) -> None:
    if accountant not in ACCOUNTANTS:
        raise GradleakError(f"dp: unknown accountant {accountant!r}; choose one of {ACCOUNTANTS}")
    if not (isinstance(delta, Real) and 0 < delta < 1):
        raise GradleakError(f"dp: delta must lie in (0, 1), got {delta!r}")


def _check_accounting(sample_rate, steps, delta, accountant) -> None:
    _check_privacy(delta, accountant)
    if not (isinstance(sample_rate, Real) and 0 < sample_rate <= 1):
        raise GradleakError(f"dp: sample_rate must lie in (0, 1], got {sample_rate!r}")
    _positive_int("steps", steps)


def _positive_int(what: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise GradleakError(f"dp: {what} must be a positive integer, got {value!r}")
    return int(value)


__all__ = ["ACCOUNTANTS", "FrozenBatchNorm", "dp", "dp_epsilon", "noise_for_epsilon"]
