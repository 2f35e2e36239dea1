"""``gradleak sweep GRID.toml``: a grid of cases read from a TOML file.

The file's ``[grid]`` lists are crossed into cases; ``[sweep]`` says which images and seeds;
``[attacks.NAME]`` and ``[models.NAME]`` set an attack's or a model's settings (a table whose
``attack`` / ``model`` key names another registered one defines a variant under a new name)::

    [sweep]
    images = "cifar10"        # any --images spec; --images on the command line overrides it
    n_images = 4
    seeds = [0]
    [grid]                    # the cross product of these lists is the set of cases
    model = ["lenet", "mlp4"]
    batch_size = [1, 2]
    labels = ["distinct"]     # distinct | repeated | random
    attack = ["idlg", "bias"]
    defense = ["none"]        # none, or NAME[:key=value,...], several joined by "+"
    [attacks.idlg]            # settings per attack, incl. iterations / restarts
    iterations = 50

FedAvg updates instead of gradients: ``local = {steps = 4, batch_size = 2, lr = 0.1}`` in
``[sweep]`` (any :class:`gradleak.threat.LocalTraining` field: ``epochs``, ``optimizer``,
``shuffle``, ...), ``hide_local = ["lr", "order"]`` for facts the server does not know, and
``clients = 4`` for the secure aggregate of 4 clients (each batch split evenly over them).
``knows_bn_statistics = true`` grants the server the batch's BatchNorm statistics (Huang et al.'s
BN_exact; attacks use them with ``bn_statistics = "exact"``).

Everything is checked when the file is read (names, settings, budgets of closed-form attacks),
with one error naming the key; a combination an attack cannot attack is a skipped case.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gradleak.errors import GradleakError
from gradleak.experiments.grid import COMPOSITIONS, Grid, grid_cases
from gradleak.experiments.spec import AttackSpec, DefenseSpec, Experiment, ModelSpec, as_items

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SWEEP_KEYS = {
    "images": str, "n_images": int, "seeds": list, "image_size": int, "channels": int,
    "knows_labels": bool, "knows_batch_size": bool, "bn_mode": str, "max_batches": int,
    "iterations": int, "restarts": int, "description": str, "local": dict,
    "hide_local": list, "clients": int, "knows_bn_statistics": bool,
}  # fmt: skip
GRID_KEYS = ("model", "batch_size", "labels", "attack", "defense")
MODEL_KEYS = {"model", "width", "weights", "num_classes", "mean", "std"}
BUDGET = ("iterations", "restarts")


def load_sweep(path: str | Path) -> Experiment:
    """The experiment a TOML grid file describes (see the module docstring).

    Raises:
        GradleakError: a missing or unreadable file, an unknown key or name, a setting an
            attack does not have, a budget for a closed-form attack.
    """
    path = Path(path)
    return sweep_experiment(read_toml(path, "sweep"), path)


def read_toml(path: Path, what: str) -> dict:
    """The tables of the TOML file ``path``; GradleakError when it is missing or not TOML."""
    if not path.is_file():
        raise GradleakError(f"no such {what} file: {path}")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GradleakError(f"{path}: not valid TOML ({err})") from None


def sweep_experiment(data: dict, path: Path) -> Experiment:
    """The experiment of a sweep file's tables ``data`` (read from ``path``, named in errors)."""
    _only(data, {"sweep", "grid", "attacks", "models"}, f"{path}")
    sweep, grid = data.get("sweep", {}), data.get("grid")
    if not isinstance(grid, dict):
        raise GradleakError(f"{path}: needs a [grid] table with {', '.join(GRID_KEYS)}")
    _only(sweep, set(SWEEP_KEYS), f"{path} [sweep]")
    for key, kind in SWEEP_KEYS.items():
        if key in sweep and not isinstance(sweep[key], kind):
            raise GradleakError(f"{path} [sweep] {key} must be a {kind.__name__}")
    _only(grid, set(GRID_KEYS), f"{path} [grid]")
    axes = {key: _list(grid, key, path) for key in GRID_KEYS}
    for key in ("model", "attack"):
        if not axes[key]:
            raise GradleakError(f"{path} [grid] needs at least one {key}")
    compositions = axes["labels"] or ["distinct"]
    for composition in compositions:
        if composition not in ("distinct", "repeated", "random"):
            raise GradleakError(
                f"{path} [grid] labels: {composition!r} is not distinct, repeated or random"
            )
    sizes = axes["batch_size"] or [1]
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise GradleakError(f"{path} [grid] batch_size must list positive integers")
    seeds = sweep.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GradleakError(f"{path} [sweep] seeds must list integers")
    settings = Grid(
        sweep.get("images", "cifar10"),
        tuple(_model(name, data.get("models", {}), path) for name in axes["model"]),
        tuple(_attack(name, data.get("attacks", {}), path) for name in axes["attack"]),
        batches=tuple(
            (b, c if b > 1 or c == "random" else "single") for b in sizes for c in compositions
        ),
        defenses=tuple(parse_defenses(text) for text in axes["defense"] or ["none"]),
        seeds=tuple(seeds),
        n_images=sweep.get("n_images", 20),
        image_size=sweep.get("image_size", 32),
        channels=sweep.get("channels", 3),
        knows_labels=sweep.get("knows_labels", True),
        knows_batch_size=sweep.get("knows_batch_size", True),
        knows_bn_statistics=sweep.get("knows_bn_statistics", False),
        bn_mode=sweep.get("bn_mode", "train"),
        max_batches=sweep.get("max_batches"),
        iterations=sweep.get("iterations"),
        restarts=sweep.get("restarts"),
        local=as_items(
            {k: tuple(v) if isinstance(v, list) else v for k, v in sweep.get("local", {}).items()}
        ),
        hidden_local=tuple(sweep.get("hide_local", ())),
        clients=sweep.get("clients", 1),
    )
    if settings.bn_mode not in ("train", "eval"):
        raise GradleakError(f"{path} [sweep] bn_mode must be 'train' or 'eval'")
    description = sweep.get("description", f"sweep {path.name}")
    return Experiment("sweep", description, settings=settings, cases=grid_cases)


def parse_defenses(text: str) -> tuple[DefenseSpec, ...]:
    """``"none"``, or ``NAME[:key=value,...]`` joined by ``+`` (applied in that order), e.g.
    ``"clip:max_norm=1+noise:sigma=0.01"``; names and parameters are checked."""
    from gradleak.defenses import parse_defense

    if not isinstance(text, str):
        raise GradleakError(f"a defense is a string like 'noise:sigma=0.01', got {text!r}")
    if text.strip() == "none":
        return ()
    specs = []
    for part in text.split("+"):
        name, params = parse_defense(part)
        specs.append(DefenseSpec(name, as_items(params)))
    return tuple(specs)


def _attack(name: str, tables: dict, path: Path) -> AttackSpec:
    from gradleak.attacks import attack_class

    table = dict(tables.get(name, {}))
    attack = table.pop("attack", name)
    cls = attack_class(attack)
    budget = {key: table.pop(key) for key in BUDGET if key in table}
    if budget and not cls.iterative():
        raise GradleakError(
            f"{path} [attacks.{name}]: {attack} is closed-form and takes no {', '.join(budget)}"
        )
    for key, value in budget.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GradleakError(f"{path} [attacks.{name}] {key} must be a positive integer")
    cls(**table)  # unknown settings are refused here, by name
    return AttackSpec(name, attack, as_items(table), **budget)


def _model(name: str, tables: dict, path: Path) -> ModelSpec:
    from gradleak.models import list_models

    table = dict(tables.get(name, {}))
    _only(table, MODEL_KEYS, f"{path} [models.{name}]")
    model = table.pop("model", name)
    if model not in list_models():
        raise GradleakError(f"unknown model {model!r}; choose one of: {', '.join(list_models())}")
    for key in ("mean", "std"):
        if key in table:
            table[key] = tuple(table[key])
    return ModelSpec(model, **table)


def _list(table: dict, key: str, path: Path) -> list:
    value = table.get(key, [])
    return value if isinstance(value, list) else [value]


def _only(table: dict, allowed: set, where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise GradleakError(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


__all__ = ["COMPOSITIONS", "load_sweep", "parse_defenses", "read_toml", "sweep_experiment"]
