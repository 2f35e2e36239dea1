"""``gradleak audit AUDIT.toml --out DIR``: which defense, at what cost in accuracy, stops the
attacks on a user's setup, written up as one self-contained ``DIR/report.html``.

An audit file is a sweep file (:mod:`~gradleak.experiments.sweep`: the model, the client's
images and batch size, local training, the defenses to compare and the attacks to try, with
their budgets) plus two tables::

    [utility]                 # what each defense costs: train with it, test on held-out images
    train = "cifar10:aux"     # the training images (near-copies of the private ones removed)
    held_out = 500            # test images held out of them
    n_train = 5000            # at most this many training images
    steps = 300               # server steps on client batches defended like the observed one
    batch_size = 32           # (and lr, optimizer, momentum, seed: gradleak.experiments.utility)
    [audit]
    title = "LeNet, batch 1"
    margin_db = 3.0           # a defense "stops" the attacks when none beats the baseline by more

The run is resumable: the attack cases, then the accuracy of every defense (``utility.json``),
then the report; a rerun skips what is finished.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from gradleak.errors import GradleakError
from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import (
    BatchSizeSpec,
    Experiment,
    LabelsSpec,
    RunOptions,
)
from gradleak.experiments.store import summarize
from gradleak.experiments.sweep import read_toml, sweep_experiment
from gradleak.report.html import is_number

#: The analyses every audit adds to the attacks: labels read off the gradient, batch size inferred.
LABELS_VARIANT = "labels recovered"
BATCH_SIZE_VARIANT = "batch size inferred"
BASELINES = ("mean_image", "gray")  # no-information references, best first
UTILITY_KEYS = {
    "train": str, "held_out": int, "n_train": int, "enabled": bool, "steps": int,
    "batch_size": int, "lr": float, "optimizer": str, "momentum": float, "seed": int,
    "partners": int,
}  # fmt: skip
BUDGET_KEYS = ("steps", "batch_size", "lr", "optimizer", "momentum", "seed", "partners")
AUDIT_KEYS = {"title": str, "margin_db": float}


@dataclass(frozen=True)
class UtilitySettings:
    """How each defense's accuracy is measured (:mod:`gradleak.experiments.utility`): training on
    ``train`` (at most ``n_train`` images) minus ``held_out`` test images, with the
    :class:`~gradleak.experiments.utility.UtilityBudget` fields given in ``budget`` (the others
    keep their defaults)."""

    train: str = "cifar10:aux"
    held_out: int = 500
    n_train: int | None = None
    budget: tuple = ()
    enabled: bool = True


@dataclass(frozen=True)
class Audit:
    """An audit: the grid of attack cases (defenses x attacks x images), the utility
    measurement, the report's title and the margin (dB over the no-information baseline) from
    which an attack counts as leaking."""

    grid: Grid
    utility: UtilitySettings
    title: str
    margin_db: float = 3.0
    source: str = ""  # the audit file's text, shown in the report


def load_audit(path: str | Path) -> Audit:
    """The audit a TOML file describes (see the module docstring); every mistake is one
    GradleakError naming the key."""
    path = Path(path)
    data = read_toml(path, "audit")
    utility = _table(data.pop("utility", {}), UTILITY_KEYS, f"{path} [utility]")
    report = _table(data.pop("audit", {}), AUDIT_KEYS, f"{path} [audit]")
    experiment = sweep_experiment(data, path)
    grid: Grid = experiment.settings
    methods = (
        *grid.methods,
        LabelsSpec(LABELS_VARIANT, "auto"),
        BatchSizeSpec(BATCH_SIZE_VARIANT),
    )
    budget = tuple((k, utility.pop(k)) for k in BUDGET_KEYS if k in utility)
    settings = UtilitySettings(**utility, budget=budget)
    _budget(settings, grid.bn_mode, f"{path} [utility]")
    if settings.held_out < 1 or (settings.n_train is not None and settings.n_train < 1):
        raise GradleakError(f"{path} [utility] held_out and n_train must be at least 1")
    return Audit(
        dataclasses.replace(grid, methods=methods),
        settings,
        title=report.get("title", path.stem),
        margin_db=float(report.get("margin_db", 3.0)),
        source=path.read_text(),
    )


def audit_experiment(audit: Audit) -> Experiment:
    """The attack cases of ``audit`` as an experiment (its settings are the grid, so that
    ``--images``, ``--n-images``, ``--iterations`` override them as in a sweep)."""
    return Experiment("audit", audit.title, settings=audit.grid, cases=grid_cases)


def run_audit(
    audit: Audit, out: str | Path, options: RunOptions | None = None, *, progress=None
) -> Path:
    """Run the audit into ``out``: the attack cases, each defense's accuracy, then
    ``out/report.html``; returns the report's path. Interrupted, what finished is kept."""
    from gradleak.experiments.runner import run_experiment

    options = options or RunOptions()
    out = Path(out)
    results = run_experiment(audit_experiment(audit), out, options, progress=progress)
    grid = options.apply(audit.grid, "audit")
    accuracy = measure_utility(audit, grid, out, progress) if audit.utility.enabled else {}
    return write_report(out, audit, grid, results, accuracy)


def measure_utility(audit: Audit, grid: Grid, out: Path, progress=None) -> dict[str, dict]:
    """The accuracy of the audit's model trained with each defense of the grid (one entry per
    defense label, ``"none"`` included), resumable in ``out/utility.json``."""
    from gradleak.experiments import build
    from gradleak.experiments.utility import UtilityStore, utility_split

    settings = audit.utility
    private = grid.images
    train, test = utility_split(
        grid.data,
        source=settings.train,
        n_train=settings.n_train,
        n_test=settings.held_out,
        size=private.size,
        channels=private.channels,
    )
    budget = _budget(settings, grid.bn_mode, "[utility]")
    store = UtilityStore(out / "utility.json")
    model = build.model(dataclasses.replace(grid.models[0], seed=grid.seeds[0]), private)
    measured = {}
    for defenses in grid.defenses:
        label = " + ".join(d.label for d in defenses) or "none"
        if progress is not None:
            progress.note(f"accuracy with defense {label}: {budget.steps} training steps")
        measured[label] = store.accuracy(
            model, train, test, [(d.name, dict(d.params)) for d in defenses], budget
        )
    return measured


def _budget(settings: UtilitySettings, bn_mode: str, where: str):
    from gradleak.experiments.utility import UtilityBudget

    try:
        return UtilityBudget(**dict(settings.budget), bn_mode=bn_mode).check()
    except GradleakError as err:
        raise GradleakError(f"{where}: {err}") from None


def audit_verdicts(out: Path, audit: Audit, grid: Grid, results: dict, accuracy: dict):
    """The report's content: its setup line and one verdict per defense of ``grid`` (see
    :func:`gradleak.report.audit.write_audit_report` for the verdict's keys)."""
    out = Path(out)
    cases = {case.id: case for case in grid_cases(grid)}
    records = [r for r in results.get("cases", []) if r.get("id") in cases]
    if not records:
        raise GradleakError(f"{out} holds no finished case of this audit to report on")
    verdicts = []
    for defenses in grid.defenses:
        label = " + ".join(d.label for d in defenses) or "none"
        mine = [r for r in records if r.get("defense") == label]
        analyses = (LABELS_VARIANT, BATCH_SIZE_VARIANT)
        verdicts.append(
            _verdict(
                label,
                [r for r in mine if r.get("variant") not in analyses],
                [r for r in mine if r.get("variant") == LABELS_VARIANT],
                [r for r in mine if r.get("variant") == BATCH_SIZE_VARIANT],
                accuracy.get(label),
                accuracy.get("none"),
                audit.margin_db,
                BASELINES,
                cases,
                out,
            )
        )
    return _setup_line(grid, records, cases), verdicts


def write_report(out: Path, audit: Audit, grid: Grid, results: dict, accuracy: dict) -> Path:
    """``out/report.html`` for the audit's finished cases and accuracies."""
    from gradleak.report.audit import write_audit_report

    setup, verdicts = audit_verdicts(out, audit, grid, results, accuracy)
    budget = next((v.get("budget") for v in accuracy.values() if isinstance(v, dict)), None)
    settings = [("The audit file:", audit.source)]
    settings.append(("Utility measurement:", _json(dataclasses.asdict(audit.utility))))
    if budget:
        settings.append(("Its training budget:", _json(budget)))
    settings += [
        ("The grid that ran:", _json(results.get("settings"))),
        ("Versions:", _json(results.get("versions"))),
    ]
    return write_audit_report(
        Path(out) / "report.html",
        title=audit.title,
        setup=setup,
        verdicts=verdicts,
        margin_db=audit.margin_db,
        settings=settings,
    )


def _json(value) -> str:
    from gradleak.records import json_safe

    return json.dumps(json_safe(value), indent=1)


def _verdict(
    label, attacks, label_runs, size_runs, utility, clean, margin, baselines, cases, out
) -> dict:
    by_variant: dict[str, list[dict]] = {}
    for record in attacks:
        by_variant.setdefault(record["variant"], []).append(record)
    rows = []
    for variant, runs in by_variant.items():
        done = [r for r in runs if r.get("status") == "done" and is_number(r.get("psnr"))]
        reasons = sorted({r.get("error") or r.get("status") for r in runs if r not in done})
        scores = summarize(done)
        rows.append(
            {
                "variant": variant,
                "attack": runs[0].get("attack"),
                "psnr": scores["psnr_median"],
                "ssim": scores["ssim_median"],
                "label_accuracy": scores["label_accuracy"],
                "done": done,
                "not_run": reasons,
            }
        )
    reference = next(
        (r for name in baselines for r in rows if r["attack"] == name and r["psnr"] is not None),
        None,
    )
    baseline = reference["psnr"] if reference else _gray_psnr(attacks, cases)
    contenders = [r for r in rows if r is not reference and r["psnr"] is not None]
    best = max(contenders, key=lambda r: r["psnr"], default=None)
    leaks = best is not None and baseline is not None and best["psnr"] > baseline + margin
    verdict = {
        "defense": label,
        "rows": rows,
        "best": best,
        "baseline": baseline,
        "baseline_name": reference["variant"] if reference else "gray 0.5 (computed)",
        "leaks": leaks,
        "labels": summarize(label_runs)["label_accuracy"],
        "batch_sizes": [
            (r.get("estimate"), len(r.get("images") or [])) for r in size_runs if "estimate" in r
        ],
        "accuracy": (utility or {}).get("accuracy"),
        "accuracy_drop": (
            None
            if not utility or not clean
            else float(clean["accuracy"]) - float(utility["accuracy"])
        ),
        "facts": _defense_facts(attacks, cases),
        "training_epsilon": (utility or {}).get("epsilon"),
    }
    verdict["pictures"] = _pictures(best, cases, out) if best else {}
    return verdict


def _defense_facts(records: list[dict], cases: dict) -> list[dict]:
    """The observed step's defense records (e.g. DP's epsilon), from one of its cases."""
    from gradleak.experiments import build

    for record in records:
        case = cases.get(record["id"])
        if case is None:
            continue
        try:
            observation, _ = build.observation(case.observation, case.seed)
        except GradleakError:
            return []
        return list(observation.defense.get("applied", []))
    return []


def _gray_psnr(records: list[dict], cases: dict) -> float | None:
    """PSNR of flat gray images against the private images (when no baseline attack ran)."""
    from gradleak.experiments import build
    from gradleak.metrics import gray_psnr

    values = []
    seen = set()
    for record in records:
        case = cases.get(record["id"])
        if case is None or case.observation in seen:
            continue
        seen.add(case.observation)
        truth = build.truth(case.observation)
        if truth is not None:
            values += gray_psnr(truth).tolist()
    return statistics.median(values) if values else None


def _pictures(best: dict, cases: dict, out: Path) -> dict:
    """The truth above the best attack's reconstructions (PNG) and its best case's GIF."""
    from gradleak.attacks import load_reconstruction
    from gradleak.experiments import build
    from gradleak.report.figures import image_grid

    truths, recs = [], []
    for record in best["done"]:
        files = record.get("files") or {}
        case = cases.get(record["id"])
        if "reconstruction" not in files or case is None:
            continue
        truth = build.truth(case.observation)
        if truth is None:
            continue
        reconstruction = load_reconstruction(out / files["reconstruction"])
        order = record.get("order") or list(range(len(reconstruction.images)))
        truths.append(truth)
        recs.append(reconstruction.images[order])
    pictures: dict = {}
    if truths and all(t.shape[1:] == truths[0].shape[1:] for t in truths):
        pictures["grid"] = image_grid([torch.cat(truths), torch.cat(recs)], scale=3)
    top = max(best["done"], key=lambda r: r["psnr"])
    gif = (top.get("files") or {}).get("progress")
    if gif and (out / gif).is_file():
        pictures["gif"] = (out / gif).read_bytes()
        pictures["gif_psnr"] = top["psnr"]
    return pictures


def _setup_line(grid, records: list[dict], cases: dict) -> str:
    from gradleak.experiments import build

    observation = None
    for record in records:
        case = cases.get(record["id"])
        if case is not None:
            try:
                observation, _ = build.observation(case.observation, case.seed)
            except GradleakError:
                continue
            break
    models = ", ".join(m.name + (f" ({m.weights} weights)" if m.weights else "") for m in
                       grid.models)  # fmt: skip
    seen = observation.describe() if observation is not None else "(no observation)"
    knows = [
        "labels" if grid.knows_labels else None,
        "batch size" if grid.knows_batch_size else None,
    ]
    known = ", ".join(k for k in knows if k) or "neither labels nor batch size"
    return (
        f"Model {models}; private images {grid.data} ({grid.image_size}x{grid.image_size}); "
        f"the server sees {seen}; it knows: {known}; seeds {list(grid.seeds)}."
    )


def _table(table, keys: dict, where: str) -> dict:
    if not isinstance(table, dict):
        raise GradleakError(f"{where} must be a table")
    for key, value in table.items():
        if key not in keys:
            raise GradleakError(f"{where}: unknown key {key!r}; allowed: {', '.join(sorted(keys))}")
        kind = keys[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            table[key] = value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GradleakError(f"{where} {key} must be a {kind.__name__}")
    return table


__all__ = [
    "Audit",
    "UtilitySettings",
    "audit_experiment",
    "audit_verdicts",
    "load_audit",
    "run_audit",
    "write_report",
]
