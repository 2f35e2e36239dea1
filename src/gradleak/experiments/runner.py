"""The one runner: an experiment's artifacts, then its cases, on any backend, resumable.

:func:`run_experiment` resolves the user's overrides once (:class:`RunOptions`), becomes the
folder's only writer (another process writing there is refused, naming its pid), refuses a folder
that holds another run or finished cases this run would replace or drop, trains or loads the
artifacts, skips the cases a previous run finished, runs the others
(:mod:`~gradleak.experiments.backends`) writing each as it finishes, and writes ``results.json``,
``results.csv``, ``table.md`` and the figures. An interrupted case keeps its best iterate so far
(``partial.*``, :mod:`~gradleak.experiments.methods`) and runs again from its start.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gradleak.attacks import load_reconstruction
from gradleak.devices import resolve_device
from gradleak.errors import GradleakError
from gradleak.experiments import build
from gradleak.experiments.backends import run_cases
from gradleak.experiments.spec import Case, Experiment, RunOptions
from gradleak.experiments.store import PARTIAL, RunFolder, case_folder, markdown_table
from gradleak.records import environment
from gradleak.report import save_gif, save_grid

ProgressCallback = Callable[[int, int, float], None]


class Progress:
    """What a run reports as it goes; the CLI shows it (a bar on a terminal, lines otherwise).
    The base class reports nothing."""

    def case_started(self, case: Case, position: int, total: int) -> ProgressCallback | None:
        """A case starts in this process; may return its per-iteration callback."""
        return None

    def case_finished(self, case: Case, record: dict, position: int, total: int) -> None:
        """A case finished (``record["status"]``: done, skipped or failed)."""

    def training(self, name: str, steps: int) -> Callable | None:
        """An artifact starts training; may return ``callback(done, total, values)``."""
        return None

    def note(self, text: str) -> None:
        """A line worth showing (e.g. how many cases a resumed run skips)."""


def run_experiment(
    experiment: Experiment,
    out: str | Path,
    options: RunOptions | None = None,
    *,
    progress: Progress | None = None,
) -> dict:
    """Run ``experiment`` into ``out`` (see the module docstring); returns ``results.json``'s
    content. Interrupted (Ctrl-C), it writes the results of the finished cases, says which
    running case kept its best iterate, and re-raises.

    Raises:
        GradleakError: an override the experiment has no setting for, a folder another process
            writes or holding another run (or finished cases not of this run), duplicate case
            ids, or a backend that cannot start.
    """
    options = options or RunOptions()
    progress = progress or Progress()
    # A device torch cannot use fails here, not in every case; "auto" is settled once.
    options = dataclasses.replace(options, device=str(resolve_device(options.device)))
    settings = options.apply(experiment.settings, experiment.name)
    out = Path(out)
    folder = RunFolder(out, experiment.name, dataclasses.asdict(settings))
    with folder:  # the only writer until the run ends (or its process dies)
        cases = list(experiment.cases(settings))
        _check_unique(cases)
        folder.check_cases(cases)
        return _run(experiment, settings, cases, folder, options, progress)


def _run(experiment, settings, cases: list[Case], folder: RunFolder, options, progress) -> dict:
    out = folder.out
    versions = environment()
    folder.claim(versions)
    for spec in experiment.artifacts(settings):
        build.artifact(spec, out, progress.training(spec.name, spec.steps), options.device)
    pending = [case for case in cases if folder.done(case) is None]
    if len(pending) < len(cases):
        progress.note(f"{len(cases) - len(pending)} of {len(cases)} cases already in {out}")
    for case in pending:
        kept = folder.partial(case)
        if kept is not None:
            progress.note(_kept_note(out, case, kept, "an interrupted run kept its best iterate"))
    axes = list(dict.fromkeys(key for case in cases for key in case.record))

    def results() -> dict:
        return folder.results(cases, versions, experiment.summary)

    def table(content: dict) -> str:
        return (experiment.table or markdown_table)(content)

    finished = len(cases) - len(pending)
    position = {case.id: finished + i + 1 for i, case in enumerate(pending)}

    def started(case: Case):
        return progress.case_started(case, position[case.id], len(cases))

    began = time.time()
    try:
        for case, record, files in run_cases(pending, out, options, started):
            record = folder.save(case, record, files)
            finished += 1
            progress.case_finished(case, record, finished, len(cases))
            if folder.due(5.0):
                content = results()
                folder.write(content, table(content), axes)
    except KeyboardInterrupt:
        for case in pending:
            kept = folder.partial(case) if case.id not in folder.records else None
            if kept is not None and kept.get("written", 0) >= began:
                progress.note(_kept_note(out, case, kept, "kept its best iterate so far"))
        raise
    finally:  # also when interrupted: what finished is written
        content = results()
        folder.write(content, table(content), axes)
    content["files"] = write_figures(out, cases, content["cases"])
    folder.write(content, table(content), axes)
    return content


def _kept_note(out: Path, case: Case, kept: dict, what: str) -> str:
    """A line on the best iterate ``kept`` of a running ``case`` (its ``partial.json``)."""
    path = out / "cases" / case_folder(case.id) / PARTIAL[2]
    return (
        f"{case.id}: {what} (step {kept.get('step')} of {kept.get('iterations')}) in {path}; "
        "the same command runs the case again from its start"
    )


def _check_unique(cases: list[Case]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise GradleakError(f"two cases share the id {case.id!r}")
        seen.add(case.id)


# ---------------------------------------------------------------------- figures
def write_figures(out: Path, cases: list[Case], records: list[dict]) -> dict:
    """``overview.png`` and ``overview.gif`` (per variant: truth row, reconstruction row) and
    ``summary.png`` (PSNR per group); returns the paths written, relative to ``out``."""
    files = write_overview(out, cases, records)
    summary = write_summary_figure(out / "summary.png", records)
    if summary is not None:
        files["summary"] = "summary.png"
    return files


def write_overview(out: Path, cases: list[Case], records: list[dict], frames: int = 40) -> dict:
    """``overview.png`` (per variant: truth row, reconstruction row) and ``overview.gif``."""
    by_id = {case.id: case for case in cases}
    rows, movies = [], []
    attacked = [r for r in records if "reconstruction" in r.get("files", {})]
    for variant in dict.fromkeys(r["variant"] for r in attacked):
        truths, recs, clips = [], [], []
        for record in (r for r in attacked if r["variant"] == variant):
            truth = build.truth(by_id[record["id"]].observation)
            if truth is None:
                continue
            reconstruction = load_reconstruction(out / record["files"]["reconstruction"])
            order = record.get("order") or list(range(len(reconstruction.images)))
            truths.append(truth)
            recs.append(reconstruction.images[order])
            clips.append([f[order] for f in reconstruction.frames] or [recs[-1]])
        if truths and all(t.shape[1:] == truths[0].shape[1:] for t in truths):
            rows += [torch.cat(truths), torch.cat(recs)]
            movies.append((torch.cat(truths), clips))
    if not rows or any(r.shape[1:] != rows[0].shape[1:] for r in rows):
        return {}
    save_grid(out / "overview.png", rows, scale=2)
    truth, clips = movies[0]
    steps = [
        torch.cat(
            [clip[min(len(clip) - 1, round(k * (len(clip) - 1) / (frames - 1)))] for clip in clips]
        )
        for k in range(frames)
    ]
    save_gif(out / "overview.gif", steps, truth=truth, scale=2)
    return {"overview": "overview.png", "overview_gif": "overview.gif"}


def write_summary_figure(path: Path, records: list[dict]) -> Path | None:
    """PSNR of every finished case, one row per group (dots) with the median (bar)."""
    groups: dict[str, list[float]] = {}
    for record in records:
        if isinstance(record.get("psnr"), int | float):
            groups.setdefault(str(record.get("group", record.get("variant"))), []).append(
                min(float(record["psnr"]), 200.0)
            )
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(groups)
    figure, axis = plt.subplots(figsize=(7, 0.9 + 0.32 * len(names)))
    for row, name in enumerate(names):
        values = sorted(groups[name])
        axis.barh(row, values[len(values) // 2], color="#c9d9ee", height=0.6)
        axis.plot(values, [row] * len(values), "o", color="#1f4e8c", markersize=3)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("PSNR (dB) after optimal matching; bar: median")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
