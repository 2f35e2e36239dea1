"""Name -> architecture registry, seeded construction and the pretrained-weights lookup.

Each model module registers its builder with :func:`register`; adding a model touches one file.
A builder takes ``num_classes, in_channels, image_size, width`` (keywords) and returns the raw
network; :func:`build_model` seeds it, wraps it in :class:`ImageClassifier` and loads weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from gradleak.errors import GradleakError
from gradleak.limits import SIZE_LIMITS  # a config asking for more is refused before building
from gradleak.models import custom
from gradleak.models.server_block import wrap_for_server
from gradleak.models.weights import load_weights
from gradleak.models.wrapper import ImageClassifier

_PRETRAINED_DIR = Path("models", "resnet_cifar10")

# Default input normalization per family, keyed by channel count: (mean, std).
_NORMALIZATION: dict[str, dict[int, tuple[tuple[float, ...], tuple[float, ...]]]] = {
    "cifar10": {
        3: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        1: ((0.5,), (0.5,)),
    },
    # The shared He et al. ResNet weights were trained with ImageNet statistics.
    # DLG/iDLG feed raw [0, 1] pixels to LeNet (transforms.ToTensor only): no normalization.
    "none": {
        3: ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        1: ((0.0,), (1.0,)),
    },
    "imagenet": {
        3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        1: ((0.5,), (0.5,)),
    },
}

Builder = Callable[..., nn.Module]

#: The most values (parameters and buffers) a built model may hold: 2e9, 8 GB of float32.
MAX_MODEL_ELEMENTS = 2_000_000_000
#: What a model's config holds (what :func:`build_model` records): a config read from a file
#: may name nothing else (no weights path to read, for one).
CONFIG_KEYS = frozenset(
    {"name", "num_classes", "in_channels", "image_size", "width", "mean", "std",
     "normalization", "factory_kwargs", "architecture", "server"}
)  # fmt: skip
#: Seeds torch accepts.
SEED_RANGE = (-(2**63), 2**64)


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: its builder, default width and default normalization."""

    name: str
    builder: Builder
    description: str
    width: int
    normalization: str = "cifar10"
    pretrained: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    description: str,
    width: int,
    normalization: str = "cifar10",
    pretrained: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator adding a builder to the registry under ``name``."""

    def add(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, description, width, normalization, pretrained)
        return builder

    return add


def list_models() -> list[str]:
    """Sorted names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def model_info(name: str) -> dict:
    """Short description and default arguments of model ``name`` (for ``gradleak list``)."""
    spec = _spec(name)
    mean, std = _NORMALIZATION[spec.normalization][3]
    return {
        "name": spec.name,
        "description": spec.description,
        "num_classes": 10,
        "in_channels": 3,
        "image_size": 32,
        "width": spec.width,
        "mean": list(mean),
        "std": list(std),
        "pretrained": spec.pretrained,
    }


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width: int | None = None,
    seed: int = 0,
    weights: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    factory_kwargs: dict | None = None,
    architecture: str | None = None,
    server: dict | None = None,
) -> ImageClassifier:
    """Build model ``name`` for ``in_channels x image_size x image_size`` images in [0, 1].

    The same arguments give bit-identical parameters: the builder runs on CPU under a forked
    RNG seeded with ``seed``, so the caller's global RNG state is left untouched.

    Args:
        name: one of :func:`list_models`, or your own model's factory
            ``package.module:factory`` or ``path/to/file.py:factory`` (:mod:`.custom`; imported
            now, called with those of ``num_classes, in_channels, image_size, width`` it takes).
        num_classes: number of output logits.
        in_channels: image channels (1 or 3 have default normalizations).
        image_size: side of the square input images.
        width: architecture width (channels or hidden units); ``None`` for the model's default.
        seed: seed of the random initialization.
        weights: ``None``, a ``.safetensors`` path written by :func:`save_weights`, or
            ``"pretrained"`` for the shared CIFAR-10 weights of resnet20/32/44/56.
        mean, std: per-channel input normalization; ``None`` for the model's default.
        normalization: a family of defaults for ``mean`` and ``std`` (``"cifar10"``,
            ``"imagenet"``, ``"none"``); ``None`` for the model's own (``"none"`` for your own
            models).
        factory_kwargs, architecture: what the config of your own model recorded (the
            arguments its factory took, the digest of its tensors' names, shapes and dtypes);
            given back, they must still hold.
        server: what a malicious server did to the model it sent (the ``server`` record of a
            config made by :func:`gradleak.malicious.modify_model`): the network is rebuilt
            behind the block it inserted, if any; the weights then come from the observation.

    Returns:
        An :class:`ImageClassifier` in training mode; ``model.config`` rebuilds it. Your own
        model's config also holds ``normalization``, ``factory_kwargs`` and ``architecture``.
    """
    own = custom.is_own_model(name)
    if own:
        name = custom.canonical(name)
    elif factory_kwargs is not None or architecture is not None:
        raise GradleakError("factory_kwargs and architecture belong to your own models only")
    spec = None if own else _spec(name)
    width = _checked_sizes(spec, num_classes, in_channels, image_size, width)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise GradleakError(f"seed must be an integer, got {seed!r}")
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise GradleakError(f"seed must lie in [-2**63, 2**64), got {seed}")
    if spec is not None:  # sized on the meta device first: nothing allocated yet
        shapes = _meta_state(spec, num_classes, in_channels, image_size, width, server)
        _check_elements(name, shapes)
    family = normalization or (spec.normalization if spec is not None else "none")
    chosen = normalization is None and (mean is not None or std is not None)
    mean, std = _normalization(family, name, in_channels, mean, std)
    config = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "width": width,
        "mean": mean,
        "std": std,
    }
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.default_generator.manual_seed(seed)
        if own:
            net, called = custom.make_network(
                name,
                num_classes=num_classes,
                in_channels=in_channels,
                image_size=image_size,
                width=width,
            )
        else:
            net = _registered_network(spec, num_classes, in_channels, image_size, width)
    if own:
        _check_recorded(name, net, called, factory_kwargs, architecture)
        config.update(
            normalization="custom" if chosen else family,
            factory_kwargs=called,
            architecture=custom.architecture_digest(net.state_dict()),
        )
    if server is not None:
        net = wrap_for_server(net, server, (in_channels, image_size, image_size))
        config["server"] = dict(server)
    model = ImageClassifier(net, config)
    if own and weights == "pretrained":
        raise GradleakError(f"no pretrained weights for your own model {name}; pass a file")
    if isinstance(weights, str) and weights == "pretrained":
        _check_pretrained(spec, num_classes, in_channels, width)
        load_weights(model, _pretrained_path(name))
    elif weights is not None:
        load_weights(model, weights)
    return model


def _pretrained_path(name: str) -> Path:
    """Path of ``models/resnet_cifar10/<name>.safetensors`` in the shared data folder
    (``$GRADLEAK_SHARED_DATA``, else found by :func:`gradleak.data.shared_data_dir`)."""
    from gradleak.data.shared import ENV_VAR, shared_data_dir  # lazy: gradleak.data needs PIL

    relative = (_PRETRAINED_DIR / f"{name}.safetensors").as_posix()
    root = shared_data_dir(required=False)
    if root is not None and (root / relative).is_file():
        return root / relative
    searched = f"${ENV_VAR}={os.environ[ENV_VAR]}" if os.environ.get(ENV_VAR) else root
    raise GradleakError(
        f"pretrained weights {relative} not found (searched {searched or '../shared/data'}); "
        f"set ${ENV_VAR} to a folder holding {relative}"
    )


def _spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise GradleakError(
            f"unknown model {_short(name)}; choose one of: {', '.join(list_models())} "
            "(or your own: path/to/file.py:factory)"
        )
    return _REGISTRY[name]


def _check_recorded(name: str, net: nn.Module, called: dict, factory_kwargs, architecture) -> None:
    """Your own model rebuilt from a recorded config: same factory arguments, same tensors."""
    if factory_kwargs is not None and dict(factory_kwargs) != called:
        raise GradleakError(
            f"{name} was called with {dict(factory_kwargs)} when recorded, now with {called}"
        )
    digest = custom.architecture_digest(net.state_dict())
    if architecture is not None and architecture != digest:
        raise GradleakError(
            f"{name} now builds architecture {digest}, the recorded one is {architecture}"
        )


def planned_state(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    width: int | None = None,
    server: dict | None = None,
    **_normalization,
) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of ``model.net.state_dict()`` that :func:`build_model` would
    give registry model ``name`` with these arguments, found on the meta device: nothing is
    allocated, so that a config read from a file is sized (and refused) before it is built.
    The sizes are checked as :func:`build_model` checks them."""
    spec = _spec(name)
    width = _checked_sizes(spec, num_classes, in_channels, image_size, width)
    shapes = _meta_state(spec, num_classes, in_channels, image_size, width, server)
    _check_elements(name, shapes)
    return shapes


def _checked_sizes(spec, num_classes, in_channels, image_size, width) -> int | None:
    """The width to build with, once every size is a positive integer within its limit."""
    for arg, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        _check_size(arg, value)
    if spec is not None and width is None:
        width = spec.width
    if width is not None:
        _check_size("width", width)
    return width


def _meta_state(spec, num_classes, in_channels, image_size, width, server):
    with torch.device("meta"), _NoRandomFill():
        net = _registered_network(spec, num_classes, in_channels, image_size, width)
        if server is not None:
            net = wrap_for_server(net, server, (in_channels, image_size, image_size))
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


class _NoRandomFill(TorchFunctionMode):
    """Random initializations become no-ops (meta tensors hold no values; some of those ops
    would load torch's slow Python decompositions)."""

    FILLS = frozenset(
        {"normal_", "uniform_", "bernoulli_", "exponential_", "log_normal_", "cauchy_",
         "geometric_", "random_", "erfinv_"}
    )  # fmt: skip

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.FILLS and args and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


def _registered_network(spec: ModelSpec, num_classes, in_channels, image_size, width):
    return spec.builder(
        num_classes=num_classes, in_channels=in_channels, image_size=image_size, width=width
    )


def _check_elements(name: str, shapes: dict[str, tuple[int, ...]]) -> None:
    total = sum(math.prod(shape) for shape in shapes.values())
    if total > MAX_MODEL_ELEMENTS:
        raise GradleakError(
            f"model {name} with these sizes would hold {total:.3g} values (parameters and "
            f"buffers), more than the limit of {MAX_MODEL_ELEMENTS:.0e}: choose a smaller "
            "width, image_size or num_classes"
        )


def _short(value) -> str:
    """``repr(value)``, cut to one short phrase (a value may come from a file)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_size(arg: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GradleakError(f"{arg} must be a positive integer, got {_short(value)}")
    if value > SIZE_LIMITS[arg]:
        raise GradleakError(f"{arg} must be at most {SIZE_LIMITS[arg]}, got {value}")


def _normalization(family: str, name: str, in_channels: int, mean, std) -> tuple[list, list]:
    if family not in _NORMALIZATION and family != "custom":
        raise GradleakError(
            f"unknown normalization {_short(family)}; choose one of: "
            f"{', '.join(sorted(_NORMALIZATION))}"
        )
    if family == "custom" and (mean is None or std is None):
        raise GradleakError("normalization 'custom' needs both mean and std")
    if mean is None or std is None:
        defaults = _NORMALIZATION[family].get(in_channels)
        if defaults is None:
            raise GradleakError(
                f"{name} has no default normalization for in_channels={in_channels}; "
                f"pass mean and std"
            )
        mean = defaults[0] if mean is None else mean
        std = defaults[1] if std is None else std
    try:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError, OverflowError) as err:
        raise GradleakError(f"mean and std must be sequences of numbers ({err})") from None
    if not all(math.isfinite(v) for v in mean + std):
        raise GradleakError(f"mean and std must be finite numbers, got {mean} and {std}")
    return mean, std


def _check_pretrained(spec: ModelSpec, num_classes: int, in_channels: int, width: int) -> None:
    if not spec.pretrained:
        pretrained = [n for n in list_models() if _REGISTRY[n].pretrained]
        raise GradleakError(
            f"no pretrained weights for {spec.name}; available: {', '.join(pretrained)}"
        )
    wanted = {"num_classes": 10, "in_channels": 3, "width": spec.width}
    given = {"num_classes": num_classes, "in_channels": in_channels, "width": width}
    if given != wanted:
        need = ", ".join(f"{k}={v}" for k, v in wanted.items())
        got = ", ".join(f"{k}={v}" for k, v in given.items() if v != wanted[k])
        raise GradleakError(f"pretrained {spec.name} weights need {need}; got {got}")
