r"""The uniform attack call, what attacks need, and the reconstruction they return.

Every attack is ``attack(observation, seed=..., batch_size=..., callback=...) -> Reconstruction``;
iterative attacks also take a budget (``iterations``, ``restarts``). The base class owns the
chores: it hides what the threat model does not allow the attacker to know
(:meth:`Observation.attacker_view`), rebuilds the server's model, settles the batch size, switches
off optional parts that cannot apply (recorded in the reconstruction's notes), checks the attack's
declared :class:`Requirement`\ s, seeds the randomness and times the run. Subclasses declare
``name``, ``defaults`` and ``requirements`` and implement :meth:`Attack.reconstruct`.

Before running anything, ``attack.check(observation)`` lists the reasons an attack does not apply
(as Opacus's validators do for layers): the CLI, ``analyze`` and experiments ask every registered
attack (:mod:`gradleak.attacks.registry`) instead of naming them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gradleak.devices import module_device, resolve_device
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.records import json_safe
from gradleak.threat import Observation

ProgressCallback = Callable[[int, int, float], None]
"""``callback(iteration, total_iterations, best_gradient_distance)``."""

BUDGET = ("iterations", "restarts")


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


@dataclass
class AttackContext:
    """Everything one run of an attack may use.

    Attributes:
        attack: the attack's name (for messages).
        observation: the attacker's view (no ground truth, hidden facts removed).
        model: the server's model with the observed weights, in the observed mode.
        batch_size: known, given or guessed.
        settings: the attack's settings for this run (optional parts may be switched off).
        generator: seeds every random choice of the run (on the CPU, whatever the device).
        callback: progress callback, or None.
        device: where an optimization runs (closed-form attacks compute on the CPU).
        notes: facts the run records in :attr:`Reconstruction.notes` (e.g. ``"disabled"``).
    """

    attack: str
    observation: Observation
    model: ImageClassifier
    batch_size: int
    settings: Any
    generator: torch.Generator = field(default_factory=torch.Generator)
    callback: ProgressCallback | None = None
    notes: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    explicit: frozenset = frozenset()

    def disable(self, setting: str, reason: str) -> None:
        """Switch the optional part weighted by ``setting`` off (its value becomes 0) and record
        ``reason`` under ``notes["disabled"]``."""
        off = type(getattr(self.settings, setting))(0)
        self.settings = dataclasses.replace(self.settings, **{setting: off})
        self.notes.setdefault("disabled", {})[setting] = reason

    def progress(self, done: int, total: int, value: float = float("nan")) -> None:
        if self.callback is not None:
            self.callback(done, total, value)


@dataclass(frozen=True)
class Requirement:
    """Something an attack needs from the case it attacks.

    ``description`` names it (``gradleak list`` shows it); ``problem(context)`` returns why the
    case lacks it, or None. Make one with the :func:`requirement` decorator.
    """

    description: str
    problem: Callable[[AttackContext], str | None]


def requirement(description: str) -> Callable[[Callable[[AttackContext], str | None]], Requirement]:
    """Decorator: ``@requirement("batch size 1") def one(context): ...`` makes a Requirement."""

    def make(problem: Callable[[AttackContext], str | None]) -> Requirement:
        return Requirement(description, problem)

    return make


#: Settings that must be strictly positive; every other number must be finite and at least 0.
POSITIVE_SETTINGS = frozenset(
    {"iterations", "restarts", "lr", "local_lr", "feature_lr", "weight_lr", "refine_lr"}
    | {"group_every", "lbfgs_inner", "width", "layers", "patience", "tolerance"}
)
#: Largest integer setting accepted (steps, restarts, widths): a typo must not run for ever.
MAX_INT_SETTING = 10_000_000
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def checked_settings(attack: Attack, overrides: dict) -> dict:
    """``overrides`` converted to the types of ``attack.defaults``' fields and range-checked.

    Raises:
        GradleakError: a value of the wrong type (``tv=abc``), a negative, zero-where-positive
            or non-finite number (``lr=-1``), or an integer above :data:`MAX_INT_SETTING`.
    """
    hints = typing.get_type_hints(type(attack.defaults))
    return {key: _checked(attack.name, key, value, hints[key]) for key, value in overrides.items()}


def _checked(attack: str, key: str, value, hint):
    where = f"attack '{attack}': setting {key}"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and type(None) in typing.get_args(hint):  # Optional[X]
        return None if value is None else _checked(attack, key, value, args[0])
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise GradleakError(f"{where} takes a list of numbers, got {value!r}")
        return tuple(_checked(attack, key, item, args[0]) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE + _FALSE:
            return text in _TRUE
        raise GradleakError(f"{where} takes true or false, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise GradleakError(f"{where} takes a name, got {value!r}")
    if hint in (int, float):
        number = value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GradleakError(f"{where} takes a number, got {value!r}")
        if hint is int:
            if not (math.isfinite(value) and float(value).is_integer()):
                raise GradleakError(f"{where} takes a whole number, got {value!r}")
            number = int(value)
            if number > MAX_INT_SETTING:
                raise GradleakError(f"{where} must be at most {MAX_INT_SETTING}, got {number}")
        else:
            number = float(value)
        if not math.isfinite(number) or number < 0 or (number == 0 and key in POSITIVE_SETTINGS):
            bound = "positive" if key in POSITIVE_SETTINGS else "a finite number >= 0"
            raise GradleakError(f"{where} must be {bound}, got {value!r}")
        return number
    return value


class Attack:
    """Base of all attacks: ``attack(observation, **options) -> Reconstruction``.

    Subclasses set ``name``, a frozen settings dataclass instance ``defaults`` (settings with
    the fields ``iterations`` and ``restarts`` make the attack iterative: only those take a
    budget), ``requirements``, ``expected`` (what it recovers when it applies) and
    ``reads_updates``, and implement :meth:`reconstruct`. Keyword arguments of the constructor
    override the defaults by name.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar = None
    requirements: ClassVar[tuple[Requirement, ...]] = ()
    expected: ClassVar[str] = ""
    #: Whether the attack replays FedAvg updates (local training); attacks that do not read one
    #: averaged gradient: an update applies to them only when it is a known multiple of one.
    reads_updates: ClassVar[bool] = False
    #: Whether the attack needs the update itself even when it is a known multiple of one
    #: gradient (an attack on local training's structure); others read such an update as the
    #: gradient it is, exactly and better conditioned (``lr`` x the gradient shrinks an l2
    #: objective by ``lr**2``).
    needs_update: ClassVar[bool] = False

    def __init__(self, **overrides):
        known = {f.name for f in dataclasses.fields(self.defaults)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise GradleakError(
                f"attack '{self.name}' has no setting {', '.join(map(repr, unknown))}; "
                f"settings: {', '.join(sorted(known))}"
            )
        self.settings = dataclasses.replace(self.defaults, **checked_settings(self, overrides))
        self.explicit = frozenset(overrides)  # what the caller set (recipes leave it alone)

    @classmethod
    def iterative(cls) -> bool:
        """Whether the attack optimizes, and so takes a budget (``iterations``, ``restarts``)."""
        names = {f.name for f in dataclasses.fields(cls.defaults)}
        return all(key in names for key in BUDGET)

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return (cls.__doc__ or cls.name).strip().splitlines()[0]

    # ------------------------------------------------------------------ checking
    def check(
        self,
        observation: Observation,
        *,
        batch_size: int | None = None,
        model: ImageClassifier | None = None,
    ) -> list[str]:
        """The reasons this attack, with its settings, does not apply to ``observation`` (empty
        when it does). ``batch_size`` is the attacker's guess when the threat model hides it."""
        try:
            context = self._context(observation, batch_size, self.settings, model)
        except GradleakError as err:
            return [str(err)]
        return self._problems(context)

    def planned_settings(self, observation: Observation, *, batch_size: int | None = None):
        """The settings a run on ``observation`` would use: with the trained-network recipe
        applied where it is due and the optional parts that cannot apply switched off."""
        return self._context(observation, batch_size, self.settings, None).settings

    def expectation(self, context: AttackContext) -> str:
        """What the attack should recover in ``context`` (for ``gradleak analyze``)."""
        return self.expected

    def configure(self, context: AttackContext) -> None:
        """Switch off optional parts that cannot apply to ``context`` (:meth:`AttackContext.
        disable`); the default has none."""

    def guess_batch_size(self, observation: Observation) -> int | None:
        """The attack's own guess of a hidden batch size (None: it has none, the caller must
        pass one)."""
        return None

    # ------------------------------------------------------------------ running
    def __call__(
        self,
        observation: Observation,
        *,
        iterations: int | None = None,
        restarts: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        callback: ProgressCallback | None = None,
        model: ImageClassifier | None = None,
        device: str | torch.device | None = None,
    ) -> Reconstruction:
        """Reconstruct the client's batch from ``observation``.

        Args:
            observation: what the server saw; ground truth, if attached, is never used.
            iterations, restarts: override an iterative attack's budget (an error for
                closed-form attacks).
            seed: seeds every random choice of the attack.
            batch_size: the attacker's guess when the threat model hides the batch size.
            callback: progress callback, called once per iteration.
            model: the server's model rebuilt from ``observation`` (built here when omitted).
            device: where to optimize (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
                ``"mps"``; None: the CPU); results come back on the CPU. Closed-form attacks
                compute on the CPU whatever it says.

        Raises:
            GradleakError: the attack does not apply (the reasons of :meth:`check`).
        """
        settings = self.settings
        budget = {k: v for k, v in (("iterations", iterations), ("restarts", restarts)) if v}
        if budget and not self.iterative():
            raise GradleakError(
                f"attack '{self.name}' is closed-form: it takes no {' or '.join(budget)}"
            )
        for key, value in budget.items():
            if int(value) < 1:
                raise GradleakError(f"{key} must be at least 1, got {value}")
            settings = dataclasses.replace(settings, **{key: int(value)})
        context = self._context(
            observation, batch_size, settings, model, self.explicit | frozenset(budget)
        )
        problems = self._problems(context)
        if problems:
            raise GradleakError(f"attack '{self.name}' does not apply: {'; '.join(problems)}")
        context.generator = torch.Generator().manual_seed(seed)
        context.callback = callback
        context.device = resolve_device(device)
        home = module_device(context.model)  # the caller's model goes back there
        start = time.perf_counter()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = self.reconstruct(context)
        finally:
            context.model.to(home)
        result.seconds = time.perf_counter() - start
        result.images, result.labels = result.images.cpu(), result.labels.cpu()
        result.frames = [frame.cpu() for frame in result.frames]
        settings = dataclasses.asdict(context.settings)
        result.settings = {"attack": self.name, "seed": seed, **settings}
        result.notes = {**context.notes, **result.notes}
        return result

    def reconstruct(self, context: AttackContext) -> Reconstruction:
        raise NotImplementedError

    # ------------------------------------------------------------------ internals
    def _context(
        self,
        observation: Observation,
        batch_size: int | None,
        settings,
        model: ImageClassifier | None,
        explicit: frozenset | None = None,
    ) -> AttackContext:
        view = observation.attacker_view()
        known = view.known_batch_size
        if batch_size is not None and known is not None and batch_size != known:
            raise GradleakError(
                f"batch size {batch_size} contradicts the observation's known {known}"
            )
        if batch_size is not None and batch_size < 1:
            raise GradleakError(f"batch size must be at least 1, got {batch_size}")
        size = known or batch_size or self.guess_batch_size(view)
        if size is None:
            raise GradleakError(
                "the threat model hides the batch size; pass batch_size= (or --batch-size)"
            )
        model = view.build_model() if model is None else model
        read_as_gradient = (
            view.kind == "update" and not self.needs_update and view.is_scaled_gradient()
        )
        if read_as_gradient:
            view = view.as_gradient()
        context = AttackContext(self.name, view, model, int(size), settings)
        context.explicit = self.explicit if explicit is None else explicit
        if read_as_gradient:
            context.notes["observed"] = "one plain-SGD step: read as lr x the averaged gradient"
        if view.clients > 1 and not self.reads_updates:
            context.notes["clients"] = (
                f"the {view.clients} clients' mean read as one batch of all their images "
                "(exact for gradients without train-mode BatchNorm)"
            )
        self.configure(context)
        return context

    def _problems(self, context: AttackContext) -> list[str]:
        problems = []
        if context.observation.kind != "gradient" and not self.reads_updates:
            problems.append(
                f"'{self.name}' reads one averaged gradient; the observation is "
                f"{context.observation.describe()}"
            )
        for needed in self.requirements:
            problem = needed.problem(context)
            if problem:
                problems.append(problem)
        return problems


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
