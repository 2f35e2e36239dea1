"""Running a preset or one attack end to end: observe, attack, score, write figures and JSON."""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gradleak.attacks import (
    Reconstruction,
    get_attack,
    load_reconstruction,
    save_reconstruction,
)
from gradleak.data import ImageSet, load_images
from gradleak.errors import GradleakError
from gradleak.experiments.presets import COMPOSITIONS, Preset, SweepPreset
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.report import ResultsFile, save_gif, save_grid
from gradleak.report.results import finest_groups
from gradleak.threat import Observation, observe

ProgressFactory = Callable[[str, int], Callable[[int, int, float], None]]
"""``progress(case_id, total_iterations) -> callback`` (e.g. a rich progress bar task)."""


def make_batches(
    images: ImageSet, batch_size: int, composition: str, max_batches: int | None = None
) -> list[list[int]]:
    """Indices of private batches formed from ``images`` in order.

    ``single``: one image per batch. ``distinct``: consecutive unused images with pairwise
    different labels. ``repeated``: unused images sharing one label, in order of appearance.
    """
    if composition not in COMPOSITIONS:
        raise GradleakError(f"unknown batch composition {composition!r}; use {COMPOSITIONS}")
    labels = images.labels.tolist()
    unused = list(range(len(labels)))
    batches: list[list[int]] = []
    if composition == "single" or batch_size == 1:
        batches = [[i] for i in unused]
    while composition != "single" and batch_size > 1 and unused:
        first = unused[0]
        batch = [first]
        for j in unused[1:]:
            if len(batch) == batch_size:
                break
            same = labels[j] == labels[first]
            distinct_ok = all(labels[j] != labels[k] for k in batch)
            if (composition == "repeated" and same) or (composition == "distinct" and distinct_ok):
                batch.append(j)
        if len(batch) == batch_size:
            batches.append(batch)
            unused = [i for i in unused if i not in batch]
        else:
            unused.remove(first)
    if max_batches is not None:
        batches = batches[:max_batches]
    return batches


def score_case(reconstruction: Reconstruction, observation: Observation) -> dict:
    """The case's scores against the evaluation-only truth (empty when there is none)."""
    truth = observation.truth
    if truth is None:
        return {}
    score = score_batch(reconstruction.images, truth.images, reconstruction.labels, truth.labels)
    return {"_order": score.order, **score.summary()}


def write_case_figures(
    directory: Path, reconstruction: Reconstruction, truth: torch.Tensor | None, order=None
) -> dict:
    """Grid PNG and progress GIF for one case; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    images = reconstruction.images if order is None else reconstruction.images[order]
    frames = reconstruction.frames if order is None else [f[order] for f in reconstruction.frames]
    rows = [truth, images] if truth is not None else [images]
    files = {"grid": str(save_grid(directory / "grid.png", rows))}
    if frames:
        files["gif"] = str(save_gif(directory / "progress.gif", frames, truth=truth))
    return files


def attack_and_report(
    observation: Observation,
    method: str,
    settings: dict,
    *,
    out: Path,
    iterations: int | None,
    restarts: int | None,
    seed: int,
    callback=None,
) -> tuple[Reconstruction, dict]:
    """Attack one observation, save the reconstruction and figures under ``out``, score it."""
    attack = get_attack(method, **settings)
    reconstruction = attack(
        observation, iterations=iterations, restarts=restarts, seed=seed, callback=callback
    )
    scores = score_case(reconstruction, observation)
    order = scores.pop("_order", None)
    truth = observation.truth.images if observation.truth is not None else None
    files = write_case_figures(out, reconstruction, truth, order)
    files["reconstruction"] = str(save_reconstruction(reconstruction, out / "reconstruction"))
    case = {
        "attack": method,
        **scores,
        "order": order.tolist() if order is not None else None,
        "labels": reconstruction.labels.tolist(),
        "gradient_distance": reconstruction.gradient_distance,
        "iterations": reconstruction.iterations,
        "seconds": reconstruction.seconds,
        "iterations_per_second": reconstruction.iterations / max(reconstruction.seconds, 1e-9),
        "notes": reconstruction.notes,
        "files": files,
    }
    if observation.truth is not None:
        case["true_labels"] = observation.truth.labels.tolist()
    return reconstruction, case


def run_preset(
    preset: Preset | SweepPreset,
    out: str | Path,
    *,
    images: str | None = None,
    n_images: int | None = None,
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    on_case: Callable[[dict], None] | None = None,
) -> dict:
    """Run every (batch, variant) case of ``preset``; write ``out/results.json`` as it goes.

    Cases already in ``out/results.json`` from a run with the same settings are not rerun.
    Returns the results dictionary (preset, settings, versions, cases, summary).
    """
    out = Path(out)
    if isinstance(preset, SweepPreset):
        module, _, function = preset.runner.partition(":")
        run = getattr(importlib.import_module(module), function)
        return run(
            out,
            images=images,
            n_images=n_images,
            iterations=iterations,
            restarts=restarts,
            seed=seed,
            progress=progress,
        )
    iterations = iterations or preset.iterations
    restarts = restarts or preset.restarts
    n_images = n_images or preset.n_images
    data_spec = images or preset.data
    settings = {
        **dataclasses.asdict(preset),
        "data": data_spec,
        "n_images": n_images,
        "iterations": iterations,
        "restarts": restarts,
        "seed": seed,
    }
    results = ResultsFile(
        out / "results.json", preset.name, settings, group_keys=("variant", "group")
    )
    pool = load_images(data_spec, size=preset.image_size)
    if preset.one_per_class:
        pool = pool.select(None, distinct_labels=True)
    pool = pool.select(min(n_images, len(pool)))
    num_classes = max(preset.num_classes, len(pool.class_names))
    model = build_model(
        preset.model,
        num_classes=num_classes,
        image_size=preset.image_size,
        width=preset.width,
        weights=preset.weights,
        seed=seed,
    )
    for batch_size, composition in preset.batches:
        repeated_composition = [c for _, c in preset.batches].count(composition) > 1
        group = f"{composition}{batch_size}" if repeated_composition else composition
        for batch in make_batches(pool, batch_size, composition):
            ids = [pool.ids[i] for i in batch]
            observation = observe(
                model,
                pool.images[batch],
                pool.labels[batch],
                bn_mode=preset.bn_mode,
                knows_labels=preset.knows_labels,
                ids=ids,
                metadata={"source": pool.source},
            )
            for variant in preset.variants:
                case_id = f"{group}/{'+'.join(_safe(i) for i in ids)}/{variant.name}"
                if results.done(case_id) is not None:
                    continue
                callback = progress(case_id, iterations) if progress else None
                start = time.perf_counter()
                try:
                    _, case = attack_and_report(
                        observation,
                        variant.attack,
                        variant.settings,
                        out=out / "cases" / case_id.replace("/", "__"),
                        iterations=iterations,
                        restarts=restarts,
                        seed=seed,
                        callback=callback,
                    )
                except GradleakError as err:
                    if not preset.record_inapplicable:
                        raise
                    # The attack does not apply to this case (e.g. R-GAP at batch size 2): that
                    # is a result of the experiment, recorded instead of a reconstruction.
                    case = {"attack": variant.attack, "psnr": None, "ssim": None, "error": str(err)}
                case = {
                    "id": case_id,
                    "variant": variant.name,
                    "composition": composition,
                    "batch_size": batch_size,
                    "group": variant.name
                    if len(preset.batches) == 1
                    else f"{variant.name}, {composition}, B={batch_size}",
                    "images": ids,
                    **case,
                    "wall_seconds": time.perf_counter() - start,
                }
                results.add(case)
                if on_case:
                    on_case(case)
    summary = results.as_dict()
    write_overview(out, summary["cases"], pool)
    write_table(out / "table.md", summary)
    return summary


def write_overview(out: Path, cases: list[dict], pool: ImageSet, frames: int = 40) -> dict:
    """``overview.png`` (per variant: truth row, reconstruction row) and ``overview.gif``."""
    index = {image_id: i for i, image_id in enumerate(pool.ids)}
    rows, movies = [], []
    for variant in dict.fromkeys(c["variant"] for c in cases):
        truths, recs, clips = [], [], []
        for case in (c for c in cases if c["variant"] == variant and "files" in c):
            reconstruction = load_reconstruction(case["files"]["reconstruction"])
            order = case.get("order") or list(range(len(reconstruction.images)))
            truths.append(pool.images[[index[i] for i in case["images"]]])
            recs.append(reconstruction.images[order])
            clips.append([f[order] for f in reconstruction.frames] or [recs[-1]])
        if truths:
            rows += [torch.cat(truths), torch.cat(recs)]
            movies.append((torch.cat(truths), clips))
    if not rows:
        return {}
    files = {"overview": str(save_grid(out / "overview.png", rows, scale=2))}
    truth, clips = movies[0]
    steps = [
        torch.cat(
            [clip[min(len(clip) - 1, round(k * (len(clip) - 1) / (frames - 1)))] for clip in clips]
        )
        for k in range(frames)
    ]
    files["overview_gif"] = str(save_gif(out / "overview.gif", steps, truth=truth, scale=2))
    return files


def write_table(path: Path, results: dict) -> Path:
    """Markdown table of the per-variant summaries."""
    lines = [
        f"# {results['preset']}",
        "",
        "| group | cases | PSNR median (dB) | SSIM median | label acc. | s / case |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in finest_groups(results["summary"]).items():
        lines.append(
            f"| {name} | {s['n_cases']} | {_fmt(s['psnr_median'], 2)} | "
            f"{_fmt(s['ssim_median'], 3)} | {_fmt(s['label_accuracy'], 2)} | "
            f"{_fmt(s['seconds_median'], 1)} |"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
