"""Attack the updates a Flower federation's :class:`AuditStrategy` captured, and report.

:func:`attack_captures` reads ``CAPTURES/captures.json``, makes one case per captured update and
attack (``"auto"``: per update, the first of :data:`AUTO` that applies to it), runs them with the
usual runner (resumable; ``OUT/results.json`` with one case per client per round, scored against
the client's images where a ``.truth.safetensors`` file lies beside the observation) and writes
``OUT/report.html`` (:mod:`gradleak.report.federation`). Updates that could not be captured are
listed with their reason, as not attackable.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from gradleak.errors import GradleakError
from gradleak.experiments.spec import AttackSpec, Case, Experiment, ObservationFile, RunOptions
from gradleak.flower.capture import CAPTURES

#: What ``"auto"`` tries on each update, in order: iDLG where the update is one plain SGD step
#: on one image (analytic label, then DLG), else Inverting Gradients (it replays local training).
AUTO = ("idlg", "inverting_gradients")
MARGIN_DB = 3.0


@dataclass(frozen=True)
class CaptureAttackSettings:
    """What determines the results: the captured files (by content), the attacks and budget."""

    captures: str
    files: tuple[tuple[str, str], ...]
    methods: tuple[str, ...] = ("auto",)
    iterations: int | None = None
    restarts: int | None = None
    seed: int = 0
    own_model: str | None = None


def read_captures(folder: str | Path) -> dict:
    """The manifest an :class:`AuditStrategy` wrote in ``folder``; GradleakError if absent."""
    path = Path(folder) / CAPTURES
    if not path.is_file():
        raise GradleakError(f"{folder} holds no {CAPTURES}: not a folder of Flower captures")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise GradleakError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("captures"), list):
        raise GradleakError(f"{path} is not a gradleak captures manifest")
    return manifest


def capture_experiment(
    folder: str | Path,
    *,
    methods: tuple[str, ...] = ("auto",),
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    own_model: str | None = None,
) -> Experiment:
    """The experiment attacking every update captured in ``folder``."""
    folder = Path(folder)
    manifest = read_captures(folder)
    files = tuple(
        (entry["file"], ObservationFile.of(folder / entry["file"], own_model).sha256)
        for entry in manifest["captures"]
        if entry.get("status") == "captured"
    )
    if not methods:
        raise GradleakError("give at least one attack (or 'auto')")
    settings = CaptureAttackSettings(
        str(folder.resolve()), files, tuple(methods), iterations, restarts, seed, own_model
    )
    not_captured = [e for e in manifest["captures"] if e.get("status") != "captured"]
    return Experiment(
        name="flower-audit",
        description=(
            f"attacks on {len(files)} client update(s) captured from a Flower federation "
            f"({manifest.get('strategy', '?')}, model {manifest.get('model', {}).get('name')})"
        ),
        settings=settings,
        cases=_cases,
        summary=lambda results: {"not_captured": not_captured},
    )


def attack_captures(
    captures: str | Path,
    out: str | Path,
    *,
    methods: tuple[str, ...] = ("auto",),
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    own_model: str | None = None,
    options: RunOptions | None = None,
    progress=None,
    margin_db: float = MARGIN_DB,
) -> dict:
    """Attack every captured update into ``out`` (``results.json``, ``cases/``, figures) and
    write ``out/report.html``; returns the results."""
    from gradleak.experiments.runner import run_experiment
    from gradleak.report.federation import write_federation_report

    experiment = capture_experiment(
        captures,
        methods=methods,
        iterations=iterations,
        restarts=restarts,
        seed=seed,
        own_model=own_model,
    )
    results = run_experiment(experiment, out, options, progress=progress)
    manifest = read_captures(captures)
    rows = verdicts(results, manifest, margin_db)
    write_federation_report(
        Path(out) / "report.html", manifest=manifest, rows=rows, results=results, out=Path(out),
        margin_db=margin_db,
    )  # fmt: skip
    return results


def verdicts(results: dict, manifest: dict, margin_db: float = MARGIN_DB) -> list[dict]:
    """One row per client per round: the best attack's scores against the flat-gray baseline,
    or why nothing could be attacked."""
    by_file: dict[str, list[dict]] = {}
    for record in results["cases"]:
        by_file.setdefault(record["file"], []).append(record)
    rows = []
    for entry in sorted(manifest["captures"], key=lambda e: (e["round"], str(e["node"]))):
        row = {**entry, "cases": by_file.get(entry.get("file"), [])}
        done = [c for c in row["cases"] if c.get("status") == "done"]
        scored = [c for c in done if isinstance(c.get("psnr"), int | float)]
        row["best"] = max(scored, key=lambda c: c["psnr"], default=done[0] if done else None)
        row["baseline"] = _gray_psnr(entry, results["settings"]["captures"])
        if entry.get("status") != "captured":
            row["verdict"] = "not attackable"
            row["why"] = entry.get("reason", "")
        elif not done:
            reasons = [c.get("error") or c.get("status") for c in row["cases"]]
            row["verdict"] = "not attackable" if row["cases"] else "not run yet"
            row["why"] = "; ".join(str(r) for r in reasons if r)
        elif not scored or row["baseline"] is None:
            row["verdict"] = "reconstructed (no truth to score)"
        elif row["best"]["psnr"] > row["baseline"] + margin_db:
            row["verdict"] = "leaks"
        else:
            row["verdict"] = "stopped"
        rows.append(row)
    return rows


def _cases(settings: CaptureAttackSettings):
    from gradleak.attacks import get_attack
    from gradleak.threat import load_observation

    folder = Path(settings.captures)
    manifest = read_captures(folder)
    digests = dict(settings.files)
    for entry in manifest["captures"]:
        if entry.get("file") not in digests:
            continue
        spec = ObservationFile(
            str(folder / entry["file"]), digests[entry["file"]], settings.own_model
        )
        record = {
            "round": entry["round"],
            "node": entry["node"],
            "file": entry["file"],
            "images": entry.get("images"),
        }
        names = []
        for method in settings.methods:
            if method != "auto":
                names.append(method)
                continue
            observation = load_observation(spec.path, with_truth=False, model=spec.own_model)
            fits = [a for a in AUTO if not get_attack(a).check(observation)]
            names.append(fits[0] if fits else AUTO[-1])  # none fits: recorded as skipped
        for name in dict.fromkeys(names):
            yield Case(
                id=f"round-{entry['round']}/node-{entry['node']}/{name}",
                observation=spec,
                method=AttackSpec(name, name, (), settings.iterations, settings.restarts),
                seed=settings.seed,
                record={**record, "variant": name, "group": f"round {entry['round']}"},
            )


def _gray_psnr(entry: dict, folder: str) -> float | None:
    """The no-information baseline on the update's images (flat gray), when they are known."""
    from safetensors.torch import load_file

    from gradleak.metrics import gray_psnr
    from gradleak.threat import truth_path

    if entry.get("status") != "captured":
        return None
    path = truth_path(Path(folder) / entry["file"])
    if not path.exists():
        return None
    return statistics.median(gray_psnr(load_file(str(path))["images"]).tolist())
