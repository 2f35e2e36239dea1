"""Batch label recovery and batch-size estimation against the batch size (``labels-sweep``).

For each model (untrained, a fresh seed per trial) and batch size, batches are drawn uniformly at
random (seeded, labels repeat), the client's averaged gradient is observed with labels hidden,
and each method's labels are scored by multiset overlap
(:func:`gradleak.metrics.label_accuracy`). Default models and data: ``mlp4`` (4 sigmoid FC
layers) and ``fc_relu`` (iLRG's 784-300-300-10 ReLU net, MNIST normalization) on the 10,000 MNIST
test digits; ``lenet`` (DLG's LeNet) on CIFAR-10 (the shared 10,000 JPEG test images). A fixed,
seeded 1,000 images of each data set are held out as the attacker's auxiliary data
(``bias+aux``) and never drawn into a batch. The batch-size sweep hides the batch size and counts
exact estimates of :func:`gradleak.gradient.estimate_batch_size`.

Every trial is one case: ``MODEL/DATA/METHOD/B=n/tT`` (label recovery) or
``MODEL/DATA/batch-size/B=n/tT`` (batch-size estimation); the tables aggregate the trials of a
cell.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gradleak.experiments.spec import (
    BatchSizeSpec,
    Case,
    Experiment,
    ImagesSpec,
    LabelsSpec,
    ModelSpec,
    ObservationSpec,
    Split,
)

LABEL_SIZES = (1, 8, 16, 32, 64, 128)
BATCH_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 31, 32, 64)
METHODS = ("idlg", "yin", "llg", "ilrg", "bias", "bias+aux", "auto (B hidden)")
BATCH_SIZE_VARIANT = "batch-size estimate"
CIFAR10_JPEG = "cifar10/test_jpeg_q75.npz"
MNIST_NORM = {"mean": (0.1307,), "std": (0.3081,)}
TARGET = (
    "issue target for untrained FC on MNIST (iLRG's published numbers): 1.0 at B=8/16, 0.80 at "
    "32, 0.60 at 64; aim 1.0 up to 64"
)


@dataclass(frozen=True)
class Setup:
    """One model on one data set, e.g. ``mlp4/mnist``."""

    name: str
    model: ModelSpec
    images: ImagesSpec


@dataclass(frozen=True)
class LabelSweepSettings:
    """Everything that determines the sweep's results.

    Attributes:
        data: run every model on these images (a :func:`gradleak.data.load_images` spec,
            converted to each model's input) instead of MNIST / the shared CIFAR-10 JPEGs.
        n_images: draw batches from at most this many images (after the auxiliary hold-out);
            cells whose batch size exceeds the pool are skipped.
        seed: picks the auxiliary split and the batches; the model of trial ``t`` is always
            initialized with seed ``t``.
        trials: trials per cell, each a fresh model and a fresh batch.
    """

    data: str | None = None
    n_images: int | None = None
    seed: int = 0
    trials: int = 10
    label_batch_sizes: tuple[int, ...] = LABEL_SIZES
    batch_size_sweep: tuple[int, ...] = BATCH_SIZES
    methods: tuple[str, ...] = METHODS
    target: str = TARGET


def setups(data: str | None = None) -> tuple[Setup, ...]:
    """The sweep's models and data: MNIST for the FC nets, CIFAR-10 JPEGs for LeNet by default.

    With ``data``, every model runs on those images instead, converted to its input: 28x28 gray
    for ``mlp4`` and ``fc_relu``, 32x32 RGB for ``lenet``; the setups are named ``MODEL/NAME``
    after the data set name or file stem.
    """
    from gradleak.data import shared_file

    fc_data = "mnist" if data is None else data
    lenet_data = str(shared_file(CIFAR10_JPEG)) if data is None else data
    fc_tag = "mnist" if data is None else _data_name(data)
    lenet_tag = "cifar10" if data is None else _data_name(data)
    gray = ImagesSpec(fc_data, size=28, channels=1)
    return (
        Setup(f"mlp4/{fc_tag}", ModelSpec("mlp4"), gray),
        Setup(f"fc_relu/{fc_tag}", ModelSpec("fc_relu", **MNIST_NORM), gray),
        Setup(f"lenet/{lenet_tag}", ModelSpec("lenet"), ImagesSpec(lenet_data)),
    )


def cases(s: LabelSweepSettings):
    """Label-recovery trials (every method at every batch size), then batch-size trials, per
    setup; batch ``t`` of size ``B`` is drawn by a generator seeded by (seed, B, t)."""
    import torch

    from gradleak.experiments import build

    for setup in setups(s.data):
        pool = dataclasses.replace(setup.images, split=Split(s.seed, "rest"), first=s.n_images)
        auxiliary = dataclasses.replace(setup.images, split=Split(s.seed, "held_out"))
        count = len(build.images(pool))
        cells = [
            (size, m) for size in s.label_batch_sizes for m in s.methods if m != "idlg" or size == 1
        ]
        cells += [(size, BATCH_SIZE_VARIANT) for size in s.batch_size_sweep]
        for size, variant in cells:
            if size > count:
                continue
            estimate = variant == BATCH_SIZE_VARIANT
            method = (
                BatchSizeSpec(variant)
                if estimate
                else LabelsSpec(
                    variant,
                    "auto" if variant == "auto (B hidden)" else variant.removesuffix("+aux"),
                    auxiliary=auxiliary if variant == "bias+aux" else None,
                    hide_batch_size=variant == "auto (B hidden)",
                )
            )
            for trial in range(s.trials):
                salt = 2 if estimate else 1
                generator = torch.Generator().manual_seed(
                    s.seed * 1_000_003 + salt * 10_007 + size * 101 + trial
                )
                chosen = torch.randperm(count, generator=generator)[:size]
                observation = ObservationSpec(
                    dataclasses.replace(setup.model, seed=trial),
                    pool,
                    tuple(chosen.tolist()),
                    knows_labels=False,
                    knows_batch_size=not estimate,
                )
                name = "batch-size" if estimate else variant
                yield Case(
                    f"{setup.name}/{name}/B={size}/t{trial}",
                    observation,
                    method,
                    seed=s.seed,
                    record={
                        "variant": variant,
                        "model": setup.name,
                        "batch_size": size,
                        "trial": trial,
                        "group": f"{setup.name}, {variant}, B={size}",
                    },
                )


def _data_name(spec: str | Path) -> str:
    from gradleak.data import DATASETS

    text = str(spec).strip()
    if text.lower() in DATASETS or text.lower() == "bundled":
        name = text.lower()
    else:
        name = "images" if "," in text else Path(text).stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "images"


def _cells(results: dict) -> dict[tuple[str, str, int], list[dict]]:
    """The trials of every (model/data, variant, batch size) cell that finished."""
    cells: dict[tuple[str, str, int], list[dict]] = {}
    for case in results["cases"]:
        if case.get("status", "done") == "done":
            cells.setdefault((case["model"], case["variant"], case["batch_size"]), []).append(case)
    return cells


def _setup_names(results: dict) -> list[str]:
    return list(dict.fromkeys(case["model"] for case in results["cases"]))


def label_rows(results: dict) -> list[dict]:
    """Label cells grouped per (model/data, batch size), in sweep order.

    Each row: ``model``, ``batch_size``, ``trials`` and ``methods`` (method -> label accuracy
    mean and minimum, fraction of exact batches, median seconds of one recovery).
    """
    settings, cells = results["settings"], _cells(results)
    rows = []
    for name in _setup_names(results):
        for size in settings["label_batch_sizes"]:
            row = {"model": name, "batch_size": size, "trials": settings["trials"], "methods": {}}
            for method in settings["methods"]:
                trials = cells.get((name, method, size))
                if trials:
                    scores = [t["label_accuracy"] for t in trials]
                    row["methods"][method] = {
                        "label_accuracy": statistics.fmean(scores),
                        "label_accuracy_min": min(scores),
                        "exact_batches": statistics.fmean(t["exact"] for t in trials),
                        "seconds_median": statistics.median(t["seconds"] for t in trials),
                    }
            if row["methods"]:
                rows.append(row)
    return rows


def batch_size_rows(results: dict) -> list[dict]:
    """Batch-size cells in sweep order: ``model``, ``batch_size``, ``trials``, ``exact_match``,
    ``claimed_exact``, ``wrong_exact_claims``, ``methods`` (estimator -> trials it decided) and
    ``estimates``."""
    settings, cells = results["settings"], _cells(results)
    rows = []
    for name in _setup_names(results):
        for size in settings["batch_size_sweep"]:
            trials = cells.get((name, BATCH_SIZE_VARIANT, size))
            if trials:
                rows.append(
                    {
                        "model": name,
                        "batch_size": size,
                        "trials": len(trials),
                        "exact_match": statistics.fmean(t["correct"] for t in trials),
                        "claimed_exact": statistics.fmean(t["claimed_exact"] for t in trials),
                        "wrong_exact_claims": sum(
                            t["claimed_exact"] and not t["correct"] for t in trials
                        ),
                        "methods": dict(Counter(t["estimator"] for t in trials)),
                        "estimates": [t["estimate"] for t in trials],
                    }
                )
    return rows


def markdown(results: dict, *, command: str | None = None, seconds: float | None = None) -> str:
    """The sweep's Markdown report: the label-accuracy and batch-size-estimation tables.

    ``command`` (e.g. ``"labels_sweep.py --trials 10"``) and ``seconds`` (default: the cells'
    total) go into the introduction.
    """
    settings, versions = results["settings"], results["versions"]
    methods = settings["methods"]
    seconds = results["summary"]["seconds"] if seconds is None else seconds
    run = f"`python benchmarks/{command}`: " if command else ""
    lines = [
        "# Batch label recovery and batch-size estimation (untrained networks)",
        "",
        f"{run}{settings['trials']} trials per cell (a fresh model seed and a fresh random batch "
        f"each), labels hidden; {seconds:.0f} s on {versions['cpu_count']} CPU cores, torch "
        f"{versions['torch']}.",
        "",
        "## Label accuracy (multiset overlap; in brackets: fraction of batches with every count "
        "exact)",
        "",
        f"{settings['target']}.",
        "",
        "| model / data | B | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for row in label_rows(results):
        cells = []
        for method in methods:
            cell = row["methods"].get(method)
            cells.append(
                f"{cell['label_accuracy']:.3f} ({cell['exact_batches']:.1f})" if cell else "-"
            )
        lines.append(f"| {row['model']} | {row['batch_size']} | " + " | ".join(cells) + " |")
    sweep = settings["batch_size_sweep"]
    lines += [
        "",
        "`yin` returns distinct labels only (at most 10); `bias+aux` uses "
        "1,000 held-out test images with labels; `auto (B hidden)` "
        "estimates the batch size first, then runs `idlg` (B=1) or `bias`. Overlap counts the "
        "true labels found, so a too-large batch-size guess (LeNet beyond B=8) is over-credited; "
        "the exact-batch fraction shows it.",
        "",
        "## Batch-size estimation (batch size hidden): exact-match rate",
        "",
        "| model / data | " + " | ".join(f"B={b}" for b in sweep) + " |",
        "|---|" + "---:|" * len(sweep),
    ]
    by_model: dict[str, dict[int, dict]] = {}
    for row in batch_size_rows(results):
        by_model.setdefault(row["model"], {})[row["batch_size"]] = row
    for model, rows in by_model.items():
        cells = []
        for size in sweep:
            row = rows.get(size)
            if row is None:
                cells.append("-")
                continue
            how = "+".join(sorted(row["methods"]))
            if row["claimed_exact"] == 1:
                how += ", exact"
            cells.append(f"{row['exact_match']:.1f} ({how})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets, the estimator `auto` used: `rank, exact` when a hidden fully connected "
        "layer's rank was below its capacity (an exact reading, claimed as such); `rank` when "
        "only the output layer's rank was below its capacity (the estimate, not claimed exact); "
        "`counts` when the rank was saturated and the most integral label counts above the rank "
        "bound were taken (a best guess).",
        "",
    ]
    return "\n".join(lines)


EXPERIMENT = Experiment(
    "labels-sweep",
    "Batch label recovery and batch-size estimation vs batch size (untrained FC/MNIST, "
    "LeNet/CIFAR-10)",
    settings=LabelSweepSettings(),
    cases=cases,
    table=markdown,
)
