"""The uniform attack call and the reconstruction it returns.

Every attack is ``attack(observation, iterations=..., restarts=..., seed=...) -> Reconstruction``.
The base class owns the chores: it hides what the threat model does not allow the attacker to
know (:meth:`Observation.attacker_view`), rebuilds the server's model, seeds the randomness, and
times the run. Subclasses implement :meth:`Attack.reconstruct` and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.report.results import json_safe
from gradleak.threat import Observation

ProgressCallback = Callable[[int, int, float], None]
"""``callback(iteration, total_iterations, best_gradient_distance)``."""


@dataclass
class Reconstruction:
    """What an attack recovers, and how it got there.

    Attributes:
        images: (B, C, H, W) in [0, 1], in the attack's own order (match before scoring).
        labels: (B,) int64.
        attack: the attack's name; ``settings`` every setting it ran with.
        gradient_distance: the kept restart's final gradient distance (lower is better).
        restart_distances: the same for every restart.
        history: best gradient distance over restarts at every iteration.
        frames: snapshots (B, C, H, W) of the best restart during optimization, for GIFs.
        frame_steps: per frame, the optimizer updates behind the iterates it was chosen from
            (0: the initialization alone; a frame is the best iterate evaluated so far).
        iterations: iterations run (may be fewer than asked when stopped early).
        seconds: wall time.
        notes: facts about the result the attack wants known (e.g. ``{"mixture": True}`` when
            the images are not separate reconstructions).
    """

    images: torch.Tensor
    labels: torch.Tensor
    attack: str
    settings: dict = field(default_factory=dict)
    gradient_distance: float = float("nan")
    restart_distances: list[float] = field(default_factory=list)
    history: list[float] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)


class Attack:
    """Base of all attacks: ``attack(observation, **budget) -> Reconstruction``.

    Subclasses set ``name``, a settings dataclass instance ``defaults`` and implement
    :meth:`reconstruct`. Keyword arguments of the constructor override the defaults by name.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar = None

    def __init__(self, **overrides):
        known = {f.name for f in dataclasses.fields(self.defaults)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise GradleakError(
                f"attack '{self.name}' has no setting {', '.join(map(repr, unknown))}; "
                f"settings: {', '.join(sorted(known))}"
            )
        self.settings = dataclasses.replace(self.defaults, **overrides)

    def __call__(
        self,
        observation: Observation,
        *,
        iterations: int | None = None,
        restarts: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        callback: ProgressCallback | None = None,
    ) -> Reconstruction:
        """Reconstruct the client's batch from ``observation``.

        Args:
            observation: what the server saw; ground truth, if attached, is never used.
            iterations, restarts: override the attack's budget.
            seed: seeds every random choice of the attack.
            batch_size: the attacker's guess when the threat model hides the batch size.
            callback: progress callback, called once per iteration.
        """
        view = observation.attacker_view()
        size = view.known_batch_size or batch_size or self.guess_batch_size(view)
        if size is None:
            raise GradleakError(
                "the threat model hides the batch size; pass batch_size= (or --batch-size)"
            )
        settings = self.settings
        if iterations is not None:
            settings = dataclasses.replace(settings, iterations=int(iterations))
        if restarts is not None:
            settings = dataclasses.replace(settings, restarts=int(restarts))
        _check_budget(settings)
        model = view.build_model()
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = self.reconstruct(view, model, size, settings, generator, callback)
        result.seconds = time.perf_counter() - start
        result.settings = {"attack": self.name, "seed": seed, **dataclasses.asdict(settings)}
        return result

    def guess_batch_size(self, observation: Observation) -> int | None:
        """The attack's own guess of a hidden batch size (None: it has none, the caller must
        pass one)."""
        return None

    def reconstruct(
        self,
        observation: Observation,
        model: ImageClassifier,
        batch_size: int,
        settings,
        generator: torch.Generator,
        callback: ProgressCallback | None,
    ) -> Reconstruction:
        raise NotImplementedError


def _check_budget(settings) -> None:
    for key in ("iterations", "restarts"):
        value = getattr(settings, key, 1)
        if value is not None and value < 1:
            raise GradleakError(f"{key} must be at least 1, got {value}")


RECONSTRUCTION_FORMAT = "gradleak.reconstruction/1"


def save_reconstruction(reconstruction: Reconstruction, path: str | Path) -> Path:
    """Write images and labels (safetensors) with settings and history (JSON header).

    ``path`` gets the ``.safetensors`` suffix if it has none.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": RECONSTRUCTION_FORMAT,
        "attack": reconstruction.attack,
        "settings": reconstruction.settings,
        "gradient_distance": reconstruction.gradient_distance,
        "restart_distances": reconstruction.restart_distances,
        "history": reconstruction.history,
        "iterations": reconstruction.iterations,
        "frame_steps": reconstruction.frame_steps,
        "seconds": reconstruction.seconds,
        "notes": reconstruction.notes,
    }
    tensors = {
        "images": reconstruction.images.detach().contiguous(),
        "labels": reconstruction.labels.detach().contiguous(),
    }
    if reconstruction.frames:
        frames = torch.stack([f.detach().clamp(0, 1) for f in reconstruction.frames])
        tensors["frames"] = frames.mul(255).round().to(torch.uint8).contiguous()
    save_file(
        tensors,
        str(path),
        metadata={"gradleak": json.dumps(json_safe(header))},
    )
    return path


def load_reconstruction(path: str | Path) -> Reconstruction:
    """Read a file written by :func:`save_reconstruction`."""
    path = Path(path)
    if not path.exists():
        raise GradleakError(f"no such file: {path}")
    try:
        with safe_open(str(path), "pt") as handle:
            header = json.loads((handle.metadata() or {}).get("gradleak", "{}"))
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise GradleakError(f"{path} is not a valid safetensors file ({err})") from None
    if header.get("format") != RECONSTRUCTION_FORMAT or "images" not in tensors:
        raise GradleakError(f"{path} is not a gradleak reconstruction file")
    return Reconstruction(
        images=tensors["images"],
        labels=tensors["labels"],
        attack=header["attack"],
        settings=header.get("settings", {}),
        gradient_distance=header.get("gradient_distance") or float("nan"),
        restart_distances=header.get("restart_distances", []),
        history=header.get("history", []),
        iterations=header.get("iterations", 0),
        seconds=header.get("seconds", 0.0),
        notes=header.get("notes", {}),
        frames=list(tensors["frames"].float().div(255)) if "frames" in tensors else [],
        frame_steps=header.get("frame_steps", []),
    )
