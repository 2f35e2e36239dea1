"""Parameterizations through generative and untrained networks, for the matching engine's stages.

Each one has ``parameters()``, ``images() -> (R, B, C, H, W)`` in [0, 1] and ``project_()``:

- :class:`Latent`: latent codes z through a frozen generator (GIAS stage 1, GIFD's first stage).
- :class:`GeneratorWeights`: per-image copies of the generator's weights at fixed z, with
  ``penalty() = lambda ||theta - theta_0||^2`` (GIAS stage 2, Jeon et al. 2021, eq. 5).
- :class:`Features`: the input of generator block k, kept in an l1 ball around its start
  (GIFD, Fang et al. 2023, eq. 4-5), with the exact projection of :func:`project_l1_ball`.
- :class:`UntrainedNetwork`: one randomly initialized decoder per restart mapping B fixed noise
  inputs to B images (deep image prior, Ulyanov, Vedaldi and Lempitsky, CVPR 2018).

Per-image or per-restart weights are stacked and run with ``torch.func.vmap`` over
``functional_call``; a Python loop is the fallback where vmap fails.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from gradleak.attacks.base import AttackContext, requirement
from gradleak.attacks.inverting_gradients import InvertingGradients
from gradleak.attacks.matching import GradientMatchingAttack, MatchingSettings, Stage
from gradleak.attacks.requirements import artifact
from gradleak.errors import GradleakError
from gradleak.generative import Generator, load_generator
from gradleak.learning import read_card


def from_inverting_gradients(cls: type, **changes) -> MatchingSettings:
    """Settings ``cls`` (a MatchingSettings subclass) with Inverting Gradients' values, changed."""
    base = InvertingGradients.defaults
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(MatchingSettings)}
    return cls(**{**values, **changes})


PRIOR = artifact("prior", "generator", "train-prior")


@requirement("a generator making images of the model's input shape")
def PRIOR_FITS(context: AttackContext) -> str | None:
    try:
        config = read_card(Path(context.settings.prior).expanduser()).get("config") or {}
    except GradleakError:
        return None  # PRIOR says why
    shape = (config.get("channels"), config.get("size"), config.get("size"))
    channels, size, _ = context.model.input_shape
    if shape != (channels, size, size):
        return (
            f"the prior {context.settings.prior} makes {shape[0]}x{shape[1]}x{shape[2]} images, "
            f"the model takes {channels}x{size}x{size}: train one with `gradleak train-prior "
            f"--size {size} --channels {channels}`"
        )
    return None


def prior_generator(context: AttackContext) -> Generator:
    """The generator named by the ``prior`` setting (checked by PRIOR and PRIOR_FITS)."""
    return load_generator(Path(context.settings.prior).expanduser()).to(context.device)


@dataclass(frozen=True)
class PriorSettings(MatchingSettings):
    """Inverting Gradients' settings plus the generative prior.

    Attributes:
        prior: the generator artifact (``.safetensors``, from ``gradleak train-prior``).
        latent_fraction: share of the iterations spent on the latent stage.
    """

    prior: str = ""
    latent_fraction: float = 0.5


def prior_defaults(cls: type, **changes) -> PriorSettings:
    """Inverting Gradients' settings for an attack through a generator: unsigned Adam (lr 0.1),
    no TV (the prior supplies the image structure), 600 steps."""
    return from_inverting_gradients(
        cls, **{"lr": 0.1, "signed": False, "tv": 0.0, "iterations": 600, **changes}
    )


class LatentSearch(GradientMatchingAttack):
    """An attack through a generative prior: GIAS's latent search (Jeon et al. 2021, eq. 4),
    ``z* = argmin_z D(grad(G(z)), g)`` over a frozen generator trained on auxiliary data, then
    the stages of :meth:`refine`, which share the iterations left."""

    requirements = (*GradientMatchingAttack.requirements, PRIOR, PRIOR_FITS)

    def later_stages(self, generator: Generator, settings) -> int:
        """How many stages follow the latent search."""
        return 1

    def refine(self, context: AttackContext, generator: Generator, latent: Latent, steps):
        """The stages after the latent search, ``steps[i]`` iterations each."""
        raise NotImplementedError

    def stages(self, context: AttackContext) -> Iterator[Stage]:
        s = context.settings
        generator = prior_generator(context)
        steps = split_iterations(s.iterations, s.latent_fraction, self.later_stages(generator, s))
        latent = Latent(generator, s.restarts, context.batch_size, context.generator)
        yield Stage(latent, steps[0], name="latent")
        yield from self.refine(context, generator, latent, steps[1:])


def split_iterations(total: int, first_fraction: float, later_stages: int) -> list[int]:
    """``total`` steps: ``first_fraction`` to the first stage, the rest evenly to the later ones.

    Every stage gets at least one step when ``total`` allows it.
    """
    if not 0 < first_fraction <= 1:
        raise GradleakError(f"the first stage's fraction must be in (0, 1], got {first_fraction}")
    first = max(1, round(total * first_fraction)) if later_stages else total
    first = min(first, max(1, total - later_stages))
    rest = total - first
    return [first] + [rest // later_stages + (i < rest % later_stages) for i in range(later_stages)]


class Latent:
    """Latent codes z (R, B, latent_dim) of a frozen generator; the images are G(z).

    Args:
        generator: frozen, in evaluation mode.
        restarts, batch_size: R and B.
        rng: seeds z ~ N(0, I).
    """

    def __init__(self, generator: Generator, restarts: int, batch_size: int, rng: torch.Generator):
        self.generator = generator
        device = next(generator.parameters()).device
        z = torch.randn(restarts, batch_size, generator.latent_dim, generator=rng)
        self.z = z.to(device).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.z]

    def images(self) -> torch.Tensor:
        return self.generator(self.z.flatten(0, 1)).unflatten(0, self.z.shape[:2])

    def project_(self) -> None:
        pass


class GeneratorWeights:
    """Per-image copies of a generator's weights (R, B, ...) at fixed latents z (R, B, L).

    The images are ``G_{theta_rb}(z_rb)``; :meth:`penalty` is GIAS's
    ``lambda * sum_b ||theta_rb - theta_0||^2`` per restart (Jeon et al. 2021, eq. 5).
    """

    def __init__(self, generator: Generator, z: torch.Tensor, weight: float):
        self.generator, self.weight = generator, float(weight)
        self.z = z.detach().clone()
        self.shape = self.z.shape[:2]
        n = self.z.shape[0] * self.z.shape[1]
        self.initial = {k: p.detach() for k, p in generator.named_parameters()}
        self.buffers = {k: b.detach() for k, b in generator.named_buffers()}
        self.weights = {
            k: p.expand(n, *p.shape).clone().requires_grad_(True) for k, p in self.initial.items()
        }
        self.vectorize = True

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def _one(self, weights: dict, z: torch.Tensor) -> torch.Tensor:
        return functional_call(self.generator, (weights, self.buffers), (z[None],))[0]

    def images(self) -> torch.Tensor:
        z = self.z.flatten(0, 1)
        if self.vectorize:
            try:
                return vmap(self._one)(self.weights, z).unflatten(0, self.shape)
            except RuntimeError as err:
                warnings.warn(f"vmap over generator copies failed ({err}); looping", stacklevel=2)
                self.vectorize = False
        per_image = [
            self._one({k: w[i] for k, w in self.weights.items()}, z[i]) for i in range(len(z))
        ]
        return torch.stack(per_image).unflatten(0, self.shape)

    def penalty(self) -> torch.Tensor:
        """``lambda * sum_b ||theta_rb - theta_0||^2``, one value per restart (R,)."""
        total = sum((w - self.initial[k]).pow(2).flatten(1).sum(1) for k, w in self.weights.items())
        return self.weight * total.view(self.shape).sum(1)

    def project_(self) -> None:
        pass


class Features:
    """The input of generator block ``k`` (R, B, ...) kept within an l1 ball around its start.

    The radius is relative: ``radius * ||f_0||_1`` per image, so that one number means the same
    at every layer (GIFD's l1-ball constraint, Fang et al. 2023, eq. 5).
    """

    def __init__(self, generator: Generator, k: int, features: torch.Tensor, radius: float):
        if radius < 0:
            raise GradleakError(f"the l1 radius must be non-negative, got {radius}")
        self.generator, self.k = generator, k
        self.start = features.detach().clone()
        self.radii = radius * self.start.flatten(2).abs().sum(-1).flatten()  # (R * B,)
        self.features = self.start.clone().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.features]

    def images(self) -> torch.Tensor:
        out = self.generator.forward_from(self.k, self.features.flatten(0, 1))
        return out.unflatten(0, self.features.shape[:2])

    @torch.no_grad()
    def project_(self) -> None:
        offset = (self.features - self.start).flatten(0, 1).flatten(1)
        projected = project_l1_ball(offset, self.radii)
        self.features.copy_(self.start + projected.view_as(self.features))

    def next_features(self) -> torch.Tensor:
        """The input of block ``k + 1`` for the current features."""
        with torch.no_grad():
            out = self.generator.blocks[self.k](self.features.flatten(0, 1))
        return out.unflatten(0, self.features.shape[:2])


def project_l1_ball(v: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of every row of ``v`` (N, D) onto ``{w : ||w||_1 <= radius}``.

    Duchi, Shalev-Shwartz, Singer and Chandra (ICML 2008), fig. 1, vectorized over rows: with
    ``u = sort(|v|)`` descending, ``c_j = sum_{i<=j} u_i`` and ``rho`` the largest j with
    ``u_j > (c_j - r) / j``, the projection is ``sign(v) * max(|v| - theta, 0)`` for
    ``theta = (c_rho - r) / rho``.
    Rows already inside their ball are returned unchanged.
    """
    if v.dim() != 2:
        raise GradleakError(f"project_l1_ball takes (N, D) rows, got {list(v.shape)}")
    radius = torch.as_tensor(radius, dtype=v.dtype, device=v.device).expand(len(v))
    if (radius < 0).any():
        raise GradleakError("l1 radii must be non-negative")
    magnitude = v.abs()
    u = magnitude.sort(dim=1, descending=True).values
    cumulative = u.cumsum(1) - radius[:, None]
    j = torch.arange(1, v.shape[1] + 1, dtype=v.dtype, device=v.device)
    rho = (u * j > cumulative).sum(1).clamp(min=1)  # the condition holds on a prefix
    theta = cumulative.gather(1, (rho - 1)[:, None]) / rho[:, None].to(v.dtype)
    projected = v.sign() * (magnitude - theta.clamp(min=0)).clamp(min=0)
    inside = magnitude.sum(1) <= radius
    return torch.where(inside[:, None], v, projected)


class Decoder(nn.Module):
    """An untrained upsampling decoder (a deep decoder, Heckel and Hand, ICLR 2019):
    noise (N, width, 4, 4) -> [2x nearest upsampling, 3x3 conv, GroupNorm, LeakyReLU] x m ->
    3x3 conv -> sigmoid -> images (N, channels, size, size) in [0, 1], size = 4 * 2^m."""

    def __init__(self, size: int, channels: int, width: int):
        super().__init__()
        if size < 4 or size & (size - 1):
            raise GradleakError(f"the deep-image-prior decoder needs a power-of-2 size, not {size}")
        if width < 1:
            raise GradleakError(f"the decoder width must be positive, got {width}")
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(size // 4))):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, width, 3, padding=1),
                nn.GroupNorm(math.gcd(8, width), width),
                nn.LeakyReLU(0.2),
            ]
        layers += [nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise)


class UntrainedNetwork:
    """Deep image prior: R untrained decoders (one per restart), each mapping B fixed noise
    inputs to the B images; the variables are the decoders' weights (Ulyanov et al. 2018).

    Args:
        shape: (R, B, C, H, W).
        width: the decoder's channels.
        rng: seeds the decoders' initial weights and the noise inputs.
    """

    def __init__(self, shape: tuple[int, ...], width: int, rng: torch.Generator, device="cpu"):
        restarts, batch, channels, height, _ = shape
        seed = int(torch.randint(2**31 - 1, (1,), generator=rng))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = [Decoder(height, channels, width) for _ in range(restarts)]
        self.net = copy.deepcopy(nets[0]).to("meta")
        weights, _ = stack_module_state(nets)
        self.weights = {
            k: w.detach().clone().to(device).requires_grad_(True) for k, w in weights.items()
        }
        self.noise = (torch.rand(restarts, batch, width, 4, 4, generator=rng) * 0.2).to(device)
        self.vectorize = True

    def parameters(self) -> list[torch.Tensor]:
        return list(self.weights.values())

    def _one(self, weights: dict, noise: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, weights, (noise,))

    def images(self) -> torch.Tensor:
        if self.vectorize:
            try:
                return vmap(self._one)(self.weights, self.noise)
            except RuntimeError as err:
                warnings.warn(f"vmap over decoders failed ({err}); looping", stacklevel=2)
                self.vectorize = False
        return torch.stack(
            [
                self._one({k: w[r] for k, w in self.weights.items()}, self.noise[r])
                for r in range(len(self.noise))
            ]
        )

    def project_(self) -> None:
        pass
