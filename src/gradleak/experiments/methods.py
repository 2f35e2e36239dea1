"""Running one case's method on its observation: an attack, a label recovery or a batch-size
estimate. Each returns the case's record and the files it made (name -> bytes), so that the
process that runs a case never has to write into the run's folder itself.

The one exception is a running attack's best iterate so far: every :data:`PARTIAL_SECONDS` of
wall time (``GRADLEAK_PARTIAL_SECONDS`` in the environment overrides it), and on Ctrl-C, the
process running it writes ``partial.json`` (step, gradient distance, PSNR),
``partial.safetensors`` (a reconstruction) and ``partial.png`` (truth row, best row) into the
case's folder, which has no ``case.json`` yet; the run's folder removes them when the case is
saved (:meth:`~gradleak.experiments.store.RunFolder.save`). They are for the user to look at: a
rerun starts the case from its beginning, so its result is bit-identical to that of a run never
interrupted (same seed, device and threads), and keeps a partial file that got further until its
own gets further.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import torch

from gradleak.attacks import Reconstruction, get_attack, save_reconstruction
from gradleak.attacks.matching import BestSoFar, keeping_best
from gradleak.attacks.objectives import matching_distance
from gradleak.errors import GradleakError
from gradleak.experiments import build
from gradleak.experiments.spec import AttackSpec, BatchSizeSpec, Case, LabelsSpec
from gradleak.experiments.store import PARTIAL, case_folder, case_record
from gradleak.metrics import label_accuracy, score_batch
from gradleak.metrics.image import psnr
from gradleak.records import write_json
from gradleak.report import save_gif, save_grid
from gradleak.threat import Observation

Files = dict[str, bytes]
#: Wall time between two writes of a running attack's best iterate.
PARTIAL_SECONDS = 30.0
PARTIAL_ENV = "GRADLEAK_PARTIAL_SECONDS"


def run_case(case: Case, root: Path, callback=None, device: str = "cpu") -> tuple[dict, Files]:
    """Run ``case`` (artifacts under ``root``); returns its record and files. A case whose
    attack does not apply is ``skipped`` with the attack's reasons; one that raises is
    ``failed`` with a one-line error (and, for an unexpected exception, its traceback)."""
    start = time.perf_counter()
    facts: dict = {}
    try:
        observation, facts = build.observation(case.observation, case.seed)
        runner = RUNNERS[type(case.method)]
        record, files = runner(case, observation, root, callback, device)
    except GradleakError as err:
        record, files = {"status": "failed", "error": str(err)}, {}
    except Exception as err:  # a bug must not stop the other cases; its traceback is kept
        error = f"{type(err).__name__}: {err}".splitlines()[0]
        record = {"status": "failed", "error": error, "traceback": traceback.format_exc()}
        files = {}
    record = {**facts, **record}
    record.setdefault("status", "done")
    record["wall_seconds"] = time.perf_counter() - start
    return record, files


# ---------------------------------------------------------------------- attacks
def run_attack(
    case: Case, observation: Observation, root: Path, callback, device: str = "cpu"
) -> tuple[dict, Files]:
    spec: AttackSpec = case.method
    attack = get_attack(spec.attack, **build.resolve(spec.settings, root))
    model = observation.attacker_view().build_model()
    problems = attack.check(observation, batch_size=spec.batch_size, model=model)
    if problems:
        return {"status": "skipped", "error": "; ".join(problems)}, {}
    keeper = KeepBest(Path(root) / "cases" / case_folder(case.id), case, observation)
    with keeping_best(keeper, partial_seconds()):
        reconstruction = attack(
            observation,
            iterations=spec.iterations,
            restarts=spec.restarts,
            seed=case.seed,
            batch_size=spec.batch_size,
            callback=callback,
            model=model,
            device=device,
        )
    record, files = describe(reconstruction, observation)
    record["cosine_distance"] = matching_distance(
        observation, model, reconstruction.images, reconstruction.labels
    )
    return record, files


def partial_seconds() -> float:
    """Seconds between two writes of a running attack's best iterate (see the docstring)."""
    text = os.environ.get(PARTIAL_ENV)
    if text is None:
        return PARTIAL_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise GradleakError(f"{PARTIAL_ENV} must be a number of seconds >= 0, got {text!r}")
    return value


class KeepBest:
    """Writes a running case's best iterate so far into ``folder`` (the ``partial.*`` files of
    the module docstring), unless a previous run of the case kept one further along."""

    def __init__(self, folder: Path, case: Case, observation: Observation):
        self.folder, self.case, self.truth = folder, case, observation.truth
        previous = case_record(folder / PARTIAL[0], case) or {}
        try:
            self.floor = int(previous.get("step", 0))
        except (ValueError, TypeError):
            self.floor = 0

    def __call__(self, best: BestSoFar) -> None:
        if best.step <= self.floor:
            return
        record = {
            "id": self.case.id,
            "key": self.case.key(),
            "attack": best.attack,
            "step": best.step,
            "iterations": best.total,
            "gradient_distance": best.gradient_distance,
            "seconds": best.seconds,
            "interrupted": best.interrupted,
            "written": time.time(),
            "labels": best.labels.tolist(),
        }
        rows = [best.images]
        if self.truth is not None and self.truth.images.shape == best.images.shape:
            score = score_batch(best.images, self.truth.images, best.labels, self.truth.labels)
            record.update(score.summary())
            rows = [self.truth.images, best.images[score.order]]
        record["resume"] = (
            "none: the best iterate so far, kept to look at; the same command runs the case "
            "again from its start and removes these files when it finishes"
        )
        reconstruction = Reconstruction(
            images=best.images,
            labels=best.labels,
            attack=best.attack,
            gradient_distance=best.gradient_distance,
            iterations=best.step,
            seconds=best.seconds,
            notes={"partial": f"best iterate after {best.step} of {best.total} steps"},
        )
        try:  # each file whole (written aside, then renamed); the record last
            self.folder.mkdir(parents=True, exist_ok=True)
            tensors = save_reconstruction(reconstruction, self.folder / ".partial.tmp")
            os.replace(tensors, self.folder / PARTIAL[1])
            os.replace(save_grid(self.folder / ".partial.tmp.png", rows), self.folder / PARTIAL[2])
            write_json(self.folder / PARTIAL[0], record)
        except OSError:
            pass  # e.g. a Ray worker on a machine without the run's folder: nothing kept


def describe(reconstruction: Reconstruction, observation: Observation) -> tuple[dict, Files]:
    """Scores against the evaluation-only truth, and the case's files: ``grid.png``,
    ``progress.gif`` and ``reconstruction.safetensors``."""
    truth = observation.truth
    record: dict = {"attack": reconstruction.attack}
    order = None
    if truth is not None:
        score = score_batch(
            reconstruction.images, truth.images, reconstruction.labels, truth.labels
        )
        order = score.order
        record.update(score.summary())
        record["order"] = order.tolist()
        record["true_labels"] = truth.labels.tolist()
        record["trajectory"] = psnr_trajectory(reconstruction, truth.images, order)
    record.update(
        labels=reconstruction.labels.tolist(),
        gradient_distance=reconstruction.gradient_distance,
        iterations=reconstruction.iterations,
        seconds=reconstruction.seconds,
        iterations_per_second=reconstruction.iterations / max(reconstruction.seconds, 1e-9),
        notes=reconstruction.notes,
        settings=reconstruction.settings,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_case_figures(folder, reconstruction, truth.images if truth else None, order)
        save_reconstruction(reconstruction, folder / "reconstruction")
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    record["files"] = sorted(files)
    return record, files


def write_case_figures(
    folder: Path, reconstruction: Reconstruction, truth: torch.Tensor | None, order=None
) -> dict:
    """Grid PNG (truth row, reconstruction row) and progress GIF of one case; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    images = reconstruction.images if order is None else reconstruction.images[order]
    frames = reconstruction.frames if order is None else [f[order] for f in reconstruction.frames]
    rows = [truth, images] if truth is not None else [images]
    files = {"grid": save_grid(folder / "grid.png", rows)}
    if frames:
        files["gif"] = save_gif(folder / "progress.gif", frames, truth=truth)
    return files


def psnr_trajectory(
    reconstruction: Reconstruction, truth: torch.Tensor, order
) -> list[tuple[int, float]]:
    """``(step, mean PSNR)`` of every frame of ``reconstruction``, in the scored order."""
    if not reconstruction.frames or not reconstruction.frame_steps:
        return []
    return [
        (int(step), float(psnr(frame[order], truth).mean()))
        for step, frame in zip(reconstruction.frame_steps, reconstruction.frames, strict=True)
    ]


# ---------------------------------------------------------------------- analyses
def run_labels(
    case: Case, observation: Observation, root: Path, callback, device: str = "cpu"
) -> tuple[dict, Files]:
    from gradleak.gradient import labels as recovery

    spec: LabelsSpec = case.method
    if spec.hide_batch_size:  # the hidden fact is falsified: nothing may read it
        observation = dataclasses.replace(observation, knows_batch_size=False, batch_size=-1)
    view = observation.attacker_view()
    model = view.build_model()
    options = {}
    if spec.auxiliary is not None:
        auxiliary = build.images(spec.auxiliary)
        options = {"auxiliary_images": auxiliary.images, "auxiliary_labels": auxiliary.labels}
    tick = time.perf_counter()
    if spec.method in ("auto", "idlg"):
        result = recovery.recover_labels(view, model, method=spec.method, **options)
    else:
        result = getattr(recovery, spec.method)(view, model, **options)
    seconds = time.perf_counter() - tick
    truth = observation.truth.labels
    if callback is not None:
        callback(1, 1, float("nan"))
    return {
        "labels": result.labels.tolist(),
        "true_labels": truth.tolist(),
        "label_accuracy": label_accuracy(result.labels, truth),
        "exact": Counter(result.labels.tolist()) == Counter(truth.tolist()),
        "label_method": result.method,
        "seconds": seconds,
    }, {}


def run_batch_size(
    case: Case, observation: Observation, root: Path, callback, device: str = "cpu"
) -> tuple[dict, Files]:
    from gradleak.gradient import estimate_batch_size

    spec: BatchSizeSpec = case.method
    truth = len(observation.truth.labels)
    tick = time.perf_counter()
    if spec.inverter is not None:
        from gradleak.learned import cached_inverter

        inverter = cached_inverter(build.resolve((("inverter", spec.inverter),), root)["inverter"])
        estimate, details = inverter.predict_batch_size(observation), {"method": "learned"}
    else:
        view = dataclasses.replace(observation, batch_size=-1).attacker_view()
        estimate, details = estimate_batch_size(view, view.build_model(), return_details=True)
    seconds = time.perf_counter() - tick
    if callback is not None:
        callback(1, 1, float("nan"))
    return {
        "estimate": int(estimate),
        "correct": int(estimate) == truth,
        "claimed_exact": bool(details.get("exact", False)),
        "estimator": details["method"],
        "seconds": seconds,
    }, {}


RUNNERS = {AttackSpec: run_attack, LabelsSpec: run_labels, BatchSizeSpec: run_batch_size}
