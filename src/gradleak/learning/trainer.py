"""A resumable training loop for the attacker's own networks (generators, inverters).

Every step draws its randomness from a generator seeded by ``(seed, step)``, and the loop writes a
checkpoint (module weights, optimizer state, step, log; safetensors + JSON) every ``every`` steps,
every ``every_seconds`` of wall time, at the end, and on Ctrl-C (after the step it interrupts,
:class:`gradleak.interrupts.StepInterrupts`). A run killed at any point and started again with the
same configuration continues from its last checkpoint and ends bit-identical to a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from gradleak.errors import GradleakError
from gradleak.interrupts import StepInterrupts
from gradleak.records import json_safe

CHECKPOINT_FORMAT = "gradleak.checkpoint/1"

TrainStep = Callable[[int, torch.Generator], dict[str, float]]
"""``step(index, generator) -> logged values``: one update of the modules."""
TrainProgress = Callable[[int, int, dict[str, float]], None]
"""``progress(done, total, logged values)``."""


def default_checkpoint(out: str | os.PathLike) -> Path:
    """The checkpoint beside an artifact: ``NAME.safetensors`` -> ``NAME.ckpt.safetensors``."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random source of step ``step``: the same on a resumed run as on an uninterrupted one."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def train(
    step: TrainStep,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    steps: int,
    seed: int,
    config: dict,
    checkpoint: str | os.PathLike | None = None,
    every: int = 100,
    log_every: int = 10,
    progress: TrainProgress | None = None,
    every_seconds: float | None = 60.0,
) -> list[dict]:
    """Run ``steps`` training steps, resuming from ``checkpoint`` when it holds this run.

    Args:
        step: performs one update; gets the step index and that step's seeded generator.
        modules, optimizers: everything whose state a checkpoint must hold, by name.
        steps: total number of steps of the run.
        seed: seeds every step (and torch's global RNG during it, e.g. for dropout).
        config: what identifies the run (data, architecture, hyper-parameters); resuming a
            checkpoint made with another configuration is refused.
        checkpoint: file to write and resume from (None: no checkpoints).
        every: steps between checkpoints.
        log_every: steps between log entries (the last step is always logged).
        progress: called after every step.
        every_seconds: wall time between checkpoints (None: by steps only), so that a slow
            run loses little when killed; Ctrl-C writes one after the step it interrupts and
            raises KeyboardInterrupt.

    Returns:
        The log: one ``{"step": n, "seconds": s, **values}`` entry per ``log_every`` steps.
    """
    if steps < 1:
        raise GradleakError(f"steps must be at least 1, got {steps}")
    config = json.loads(json.dumps(json_safe(config)))
    log: list[dict] = []
    start_step = 0
    if checkpoint is not None and Path(checkpoint).exists():
        start_step, log = load_checkpoint(checkpoint, modules, optimizers, config)
    if start_step > steps:
        raise GradleakError(
            f"checkpoint {checkpoint} is at step {start_step}, beyond the {steps} asked for"
        )
    elapsed = log[-1]["seconds"] if log else 0.0
    clock = time.perf_counter() - elapsed
    for module in modules.values():
        module.train()
    saved = time.monotonic()
    with StepInterrupts() as interrupts:
        for index in range(start_step, steps):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed) * 1_000_003 + index)
                values = step(index, step_generator(seed, index))
            done = index + 1
            if done % log_every == 0 or done == steps:
                entry = {"step": done, "seconds": time.perf_counter() - clock}
                log.append({**entry, **{k: float(v) for k, v in values.items()}})
            if progress is not None:
                progress(done, steps, values)
            due = done % every == 0 or done == steps or interrupts.pending
            if every_seconds is not None and time.monotonic() - saved >= every_seconds:
                due = True
            if checkpoint is not None and due:
                save_checkpoint(checkpoint, modules, optimizers, config, done, log)
                saved = time.monotonic()
            if interrupts.pending:
                interrupts.stop()
    return log


def save_checkpoint(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    config: dict,
    step: int,
    log: list[dict],
) -> Path:
    """Write modules' and optimizers' state atomically (safetensors; step, log, config in JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module/{name}/{key}"] = value.detach().cpu().contiguous()
    groups = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        groups[name] = state["param_groups"]
        for index, slots in state["state"].items():
            for key, value in slots.items():
                value = torch.as_tensor(value)
                tensors[f"optim/{name}/{index}/{key}"] = value.detach().cpu().contiguous()
    header = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "step": step,
        "log": log,
        "param_groups": groups,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"gradleak": json.dumps(json_safe(header))})
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    config: dict,
) -> tuple[int, list[dict]]:
    """Restore the state written by :func:`save_checkpoint`; returns ``(step, log)``."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            header = json.loads((handle.metadata() or {}).get("gradleak", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise GradleakError(f"checkpoint {path} is not a valid safetensors file ({err})") from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise GradleakError(f"{path} is not a gradleak training checkpoint")
    if header.get("config") != config:
        differs = sorted(
            k
            for k in set(config) | set(header.get("config", {}))
            if config.get(k) != header.get("config", {}).get(k)
        )
        raise GradleakError(
            f"checkpoint {path} belongs to another training run (differs in: "
            f"{', '.join(differs)}); delete it or choose another output"
        )
    try:
        for name, module in modules.items():
            prefix = f"module/{name}/"
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
        for name, optimizer in optimizers.items():
            prefix = f"optim/{name}/"
            state: dict[int, dict] = {}
            for key, value in tensors.items():
                if key.startswith(prefix):
                    index, slot = key[len(prefix) :].split("/", 1)
                    state.setdefault(int(index), {})[slot] = value
            groups = header["param_groups"][name]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (RuntimeError, KeyError, ValueError) as err:
        raise GradleakError(f"checkpoint {path} does not fit the networks ({err})") from None
    return int(header["step"]), list(header.get("log", []))
