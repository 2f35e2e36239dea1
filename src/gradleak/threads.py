"""How many CPU threads torch may use: one policy for every command.

OpenMP threads spin while they wait for each other; when another process holds a core, a
two-thread op waits for a descheduled thread and a LeNet attack runs several times slower than
with one thread (``benchmarks/threads.py`` measures it). The policy:

1. ``--threads N`` (or ``$GRADLEAK_THREADS``) wins;
2. a worker of a sweep uses one thread: the workers are the parallelism;
3. a small model (below :data:`LARGE_MODEL_MACS` multiply-accumulates per image; LeNet, the MLPs,
   CIFAR ResNets) uses one thread, which is as fast as two on them;
4. a large model (ConvNet, ResNet-18) uses the cores that no other process is using now, read
   from ``/proc/stat`` over a tenth of a second (at least one).

This module imports torch only when it sets or measures something, so the CLI stays fast.
"""

from __future__ import annotations

import os
import time

ENV = "GRADLEAK_THREADS"
LARGE_MODEL_MACS = 300e6
"""Multiply-accumulates of one image's forward pass above which a model gets several threads
(measured: ConvNet, 1.9 G, steps 1.7x faster on 2 idle cores; ResNet-20, 41 M, no faster)."""


def cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(window: float = 0.1) -> float:
    """Cores kept busy by other processes during ``window`` seconds (this one sleeps), from
    ``/proc/stat``; 0 where it cannot be read."""
    first = _cpu_times()
    if first is None:
        return 0.0
    time.sleep(window)
    second = _cpu_times()
    if second is None:
        return 0.0
    busy = (second[0] - first[0]) / max(second[1] - first[1], 1)
    return busy * (os.cpu_count() or 1)


def free_cores() -> int:
    """Cores of :func:`cores` not busy with other processes now (at least 1)."""
    return max(1, min(cores(), round(cores() - busy_cores())))


def requested(threads: int | None = None) -> int | None:
    """The explicit thread count: ``threads``, else ``$GRADLEAK_THREADS``, else None."""
    if threads is not None:
        return _positive(threads, "--threads")
    value = os.environ.get(ENV)
    if value is None or not value.strip():
        return None
    try:
        return _positive(int(value), f"${ENV}")
    except ValueError:
        from gradleak.errors import GradleakError

        raise GradleakError(f"${ENV} must be a positive integer, got {value!r}") from None


def choose(threads: int | None = None, *, macs: float | None = None, worker: bool = False) -> int:
    """Threads for one process under the policy of the module docstring.

    Args:
        threads: the user's explicit count (None: ``$GRADLEAK_THREADS`` or the policy).
        macs: multiply-accumulates of one image's forward pass of the model to run (None:
            unknown, treated as small).
        worker: the process is one of several sweep workers.
    """
    explicit = requested(threads)
    if explicit is not None:
        return explicit
    if worker or macs is None or macs < LARGE_MODEL_MACS:
        return 1
    return free_cores()


def apply(count: int) -> int:
    """Set torch's intra-op threads to ``count``; returns it."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def model_macs(model) -> float:
    """Multiply-accumulates of one forward pass of ``model`` (an ImageClassifier) on one image,
    counted over its convolutions and linear layers."""
    from torch import nn

    from gradleak.models._shape import dummy_forward

    total = 0.0

    def count(module, _inputs, output):
        nonlocal total
        per_output = module.weight[0].numel()  # in/groups x kernel, or in_features
        total += output[0].numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    dummy_forward(model, model.input_shape, [(layer, count) for layer in layers])
    return total


def _positive(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        from gradleak.errors import GradleakError

        raise GradleakError(f"{what} must be a positive integer, got {value!r}")
    return value


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores since boot."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)
