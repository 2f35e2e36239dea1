"""Your own model: ``package.module:factory`` or ``path/to/file.py:factory``.

A factory is any callable returning a ``torch.nn.Module`` that maps normalized ``(N, C, H, W)``
images to ``(N, num_classes)`` logits. It is called with the keyword arguments it accepts among
``num_classes, in_channels, image_size, width`` (it may take none). The code is imported only
when the user names the spec (``--model``, :func:`gradleak.models.build_model`); an observation
file records the spec and an architecture digest, never code, and loading one asks the user to
name the factory again (:func:`gradleak.threat.load_observation`).

Every problem is a one-line :class:`~gradleak.errors.GradleakError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gradleak.errors import GradleakError

FACTORY_ARGS = ("num_classes", "in_channels", "image_size", "width")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# Factories already imported in this process: spec -> (source key, factory). A file is
# executed again only when it changed.
_LOADED: dict[str, tuple[tuple, Callable]] = {}


def is_own_model(name) -> bool:
    """Whether ``name`` names a factory (``module:factory``) rather than a registry model."""
    return isinstance(name, str) and ":" in name


def canonical(spec: str) -> str:
    """``spec`` with surrounding blanks removed and a file path normalized
    (``./examples/own_model.py:make_net`` -> ``examples/own_model.py:make_net``)."""
    source, attribute = _split(spec)
    if _is_file(source):
        source = Path(os.path.normpath(source)).as_posix()
    return f"{source}:{attribute}"


def load_factory(spec: str) -> Callable:
    """Import the factory ``spec`` names (a module through :mod:`importlib`, a file relative to
    the current directory) and return it; imported once per process."""
    source, attribute = _split(spec)
    if _is_file(source):
        path = Path(source).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise GradleakError(f"model file {source} does not exist (from --model {spec!r})")
        stat = path.stat()
        key: tuple = ("file", str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    else:
        key = ("module", source)
    cached = _LOADED.get(spec)
    if cached is not None and cached[0] == key:
        return cached[1]
    module = _import_file(path, spec) if key[0] == "file" else _import_module(source, spec)
    factory = module
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise GradleakError(f"{source} has no {attribute!r} (from --model {spec!r})")
        factory = getattr(factory, part)
    if not callable(factory):
        raise GradleakError(
            f"{source}:{attribute} is a {type(factory).__name__}, not a callable factory"
        )
    _LOADED[spec] = (key, factory)
    return factory


def make_network(
    spec: str, *, num_classes: int, in_channels: int, image_size: int, width: int | None
) -> tuple[nn.Module, dict]:
    """Call the factory of ``spec`` and check what it returns; returns the network and the
    keyword arguments it was called with."""
    factory = load_factory(spec)
    values = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "width": width,
    }
    accepted = _accepted(factory, spec)
    if width is not None and "width" not in accepted:
        raise GradleakError(f"{spec} takes no width argument; drop the width")
    kwargs = {k: values[k] for k in FACTORY_ARGS if k in accepted and values[k] is not None}
    try:
        net = factory(**kwargs)
    except Exception as err:  # the user's code: any failure is theirs to see, in one line
        raise GradleakError(f"{spec}({_call(kwargs)}) raised {_one_line(err)}") from None
    if not isinstance(net, nn.Module):
        raise GradleakError(
            f"{spec}({_call(kwargs)}) returned a {type(net).__name__}, not a torch.nn.Module"
        )
    check_logits(spec, net, num_classes, in_channels, image_size)
    return net, kwargs


def check_logits(
    spec: str, net: nn.Module, num_classes: int, in_channels: int, image_size: int
) -> None:
    """One forward pass on a zero image (eval mode, no gradient): the output must be
    ``(1, num_classes)`` logits."""
    shape = (1, in_channels, image_size, image_size)
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            out = net(torch.zeros(shape))
    except Exception as err:
        raise GradleakError(
            f"the network of {spec} fails on a {shape} input: {_one_line(err)}"
        ) from None
    finally:
        net.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != (1, num_classes):
        raise GradleakError(
            f"the network of {spec} maps a {shape} input to {got}, not (1, {num_classes}) "
            f"logits (num_classes={num_classes})"
        )


def architecture(state: dict[str, torch.Tensor]) -> list[tuple[str, list[int], str]]:
    """The sorted ``(name, shape, dtype)`` of a state dict's tensors."""
    return sorted((k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items())


def architecture_digest(state: dict[str, torch.Tensor]) -> str:
    """The first 16 hex digits of the sha256 of :func:`architecture`."""
    text = json.dumps(architecture(state), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def first_difference(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str:
    """The first tensor (by name) whose name, shape or dtype differs, in words ('' if none)."""
    a = {name: (shape, dtype) for name, shape, dtype in architecture(ours)}
    b = {name: (shape, dtype) for name, shape, dtype in architecture(theirs)}
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            here = "missing" if name not in a else f"{a[name][0]} {a[name][1]}"
            there = "missing" if name not in b else f"{b[name][0]} {b[name][1]}"
            return f"'{name}' is {here} here, {there} in the observation"
    return ""


# ---------------------------------------------------------------------- helpers
def _split(spec: str) -> tuple[str, str]:
    source, _, attribute = str(spec).strip().rpartition(":")
    source, attribute = source.strip(), attribute.strip()
    file = _is_file(source)
    if (
        not source
        or not _DOTTED.fullmatch(attribute)
        or (file and not source.endswith(".py"))
        or (not file and not _DOTTED.fullmatch(source))
    ):
        raise GradleakError(
            f"--model {spec!r} is neither a registered model nor package.module:factory "
            "or path/to/file.py:factory"
        )
    return source, attribute


def _is_file(source: str) -> bool:
    return source.endswith(".py") or "/" in source or os.sep in source


def _import_module(name: str, spec: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(err.name + ".")):
            raise GradleakError(
                f"no module named {err.name!r} (from --model {spec!r}; is it on sys.path?)"
            ) from None
        raise GradleakError(f"importing {name} raised {_one_line(err)}") from None
    except Exception as err:
        raise GradleakError(f"importing {name} raised {_one_line(err)}") from None


def _import_file(path: Path, spec: str):
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"gradleak_own_model_{stem}_{digest}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise GradleakError(f"cannot import {path} as Python code (from --model {spec!r})")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise GradleakError(f"importing {path} raised {_one_line(err)}") from None
    return module


def _accepted(factory: Callable, spec: str) -> set[str]:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return set(FACTORY_ARGS)
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in keyword and p.name in FACTORY_ARGS}


def _call(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
