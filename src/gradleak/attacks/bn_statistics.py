"""Which BatchNorm statistics GradInversion's BN prior pulls the candidates toward.

GradInversion (Yin et al., CVPR 2021, eq. 8) matches the statistics of the candidates' features
entering every BatchNorm layer to a target. Huang, Gupta, Song, Li and Arora, "Evaluating Gradient
Inversion Attacks and Defenses in Federated Learning" (NeurIPS 2021,
https://arxiv.org/abs/2112.00059) show that the attack's strength hinges on that target, and
evaluate it under three assumptions, each a value of the setting ``bn_statistics``:

- ``"running"``: the running statistics of the model the server sent (Huang et al.'s
  "BN_infer": the attacker infers them from the global model). GradInversion's own choice and
  the default.
- ``"exact"``: the private batch's own statistics (Huang et al.'s "BN_exact", the strongest
  assumption): the observation must grant them (``observe(..., knows_bn_statistics=True)``,
  :attr:`gradleak.threat.Observation.bn_statistics`); otherwise the attack does not apply and
  the case is skipped with that reason.
- ``"proxy"``: the statistics of a batch of the same size drawn from auxiliary images the
  attacker holds (Huang et al.'s "BN_proxy"), named by the setting ``bn_proxy`` (default
  ``"cifar10:aux"``, :func:`gradleak.data.auxiliary.auxiliary_images`) and drawn with the attack
  seed. Its statistics are traced by replaying the observed client step on it, as the
  candidates' are.

Without the CIFAR-10 training split on disk, ``cifar10:aux`` is the shared folder's JPEG copies of
the test split, whose first images are the private batches of this project's experiments and
benchmarks: the proxy then never draws from its first :data:`TEST_HOLD_OUT` images.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from gradleak.attacks.base import AttackContext, requirement
from gradleak.errors import GradleakError

BN_TARGETS = ("running", "exact", "proxy")
DEFAULT_PROXY = "cifar10:aux"
#: Images of the test split the proxy never draws (the private batches come from its start).
TEST_HOLD_OUT = 1000

Statistics = list[tuple[torch.Tensor, torch.Tensor]]


def check_target(value: str) -> None:
    """Raise GradleakError unless ``value`` is one of :data:`BN_TARGETS`."""
    if value not in BN_TARGETS:
        raise GradleakError(f"bn_statistics must be one of {BN_TARGETS}, got {value!r}")


def batchnorm_names(model: nn.Module) -> list[str]:
    """Names (in ``model.net``) of the BatchNorm layers, in module order (the BN prior's order)."""
    net = getattr(model, "net", model)
    return [
        name
        for name, module in net.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]


@requirement("for bn_statistics='exact': the batch's BatchNorm statistics, granted to the server")
def BN_STATISTICS(context: AttackContext) -> str | None:
    settings = context.settings
    if not getattr(settings, "bn", 0) or getattr(settings, "bn_statistics", "running") != "exact":
        return None
    observation = context.observation
    if observation.bn_mode != "train":
        return (
            "bn_statistics='exact' needs the batch's BatchNorm statistics, but the client ran "
            "BatchNorm in eval mode (it used none)"
        )
    if not observation.bn_statistics:
        return (
            "bn_statistics='exact' needs the batch's BatchNorm statistics (Huang et al.'s "
            "BN_exact); the threat model does not grant them (knows_bn_statistics=False): use "
            "'running' or 'proxy'"
        )
    missing = [n for n in batchnorm_names(context.model) if n not in observation.bn_statistics]
    if missing:
        return f"the observation records no BatchNorm statistics for layer(s) {missing[:3]}"
    return None


def batchnorm_target(context: AttackContext, simulator) -> Statistics:
    """Per BatchNorm layer (module order) the (mean, variance) the BN prior aims at, each (C,),
    on the simulator's device, as ``context.settings.bn_statistics`` says (see the module
    docstring). Records what it used in ``context.notes["bn_statistics"]``."""
    settings = context.settings
    target = getattr(settings, "bn_statistics", "running")
    check_target(target)
    if target == "running":
        return simulator.running_statistics
    device = simulator.running_statistics[0][0].device
    if target == "exact":
        recorded = context.observation.bn_statistics
        context.notes["bn_statistics"] = "exact: the batch's own (granted by the threat model)"
        return [
            (recorded[name][0].to(device), recorded[name][1].to(device))
            for name in batchnorm_names(context.model)
        ]
    return _proxy_statistics(context, device)


def _proxy_statistics(context: AttackContext, device: torch.device) -> Statistics:
    from gradleak.gradient.simulation import ClientSimulator

    settings = context.settings
    spec = getattr(settings, "bn_proxy", DEFAULT_PROXY)
    channels, size = context.model.input_shape[0], context.model.input_shape[-1]
    images, labels, ids, skipped = _proxy_pool(spec, size, channels)
    count = context.batch_size
    if count > len(images) - skipped:
        raise GradleakError(
            f"the BN proxy needs {count} auxiliary images; {spec!r} holds {len(images) - skipped}"
        )
    generator = torch.Generator()
    generator.set_state(context.generator.get_state())  # the attack seed, its stream untouched
    chosen = torch.randperm(len(images) - skipped, generator=generator)[:count] + skipped
    num_classes = context.model.config["num_classes"]
    proxy_labels = labels[chosen].clamp(0, num_classes - 1)
    replay = ClientSimulator(
        context.model,
        batch_statistics=True,
        observation=context.observation,
        lr_guess=settings.local_lr,
    )
    with torch.no_grad():
        _, statistics = replay.simulate(
            images[chosen][None].to(device), proxy_labels[None].to(device)
        )
    context.notes["bn_statistics"] = (
        f"proxy: {count} image(s) of {spec!r}: {', '.join(ids[i] for i in chosen.tolist())}"
    )
    return [(mean[0].detach(), var[0].detach()) for mean, var in statistics]


@functools.lru_cache(maxsize=4)
def _proxy_pool(spec: str, size: int, channels: int):
    """The auxiliary pool's images, labels and ids, and how many leading images to skip."""
    from gradleak.data.auxiliary import SHARED_CIFAR10_JPEG, auxiliary_images

    data = auxiliary_images(spec, size=size, channels=channels)
    test_copies = spec.strip().lower() == DEFAULT_PROXY and SHARED_CIFAR10_JPEG in str(data.source)
    skipped = TEST_HOLD_OUT if test_copies and len(data) > TEST_HOLD_OUT else 0
    return data.images, data.labels, list(data.ids), skipped
