"""Batch label recovery and batch-size estimation against the batch size (``labels-sweep``).

For each model (untrained, a fresh seed per trial) and batch size, batches are drawn uniformly at
random (seeded, labels repeat), the client's averaged gradient is observed with labels hidden,
and each method's labels are scored by multiset overlap
(:func:`gradleak.metrics.label_accuracy`). Default models and data: ``mlp4`` (4 sigmoid FC
layers) and ``fc_relu`` (iLRG's 784-300-300-10 ReLU net, MNIST normalization) on the 10,000 MNIST
test digits; ``lenet`` (DLG's LeNet) on CIFAR-10 (the shared 10,000 JPEG test images). A fixed,
seeded 1,000 images of each data set are held out as the attacker's auxiliary data
(``bias+aux``) and never drawn into a batch. The batch-size sweep hides the batch size and counts
exact estimates of :func:`gradleak.analysis.batch_size.estimate_batch_size`.

Every (model/data, method, batch size) cell is one case of ``out/results.json``, written as the
run goes; a rerun with the same settings skips the cells already recorded.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradleak.data import DATASETS, ImageSet, load_images, shared_file
from gradleak.gradient import estimate_batch_size
from gradleak.gradient.labels import LabelRecovery, bias, ilrg, llg, recover_labels, yin
from gradleak.metrics import label_accuracy
from gradleak.models import ImageClassifier, build_model
from gradleak.report import ResultsFile
from gradleak.threat import Observation, observe

PRESET = "labels-sweep"
LABEL_SIZES = (1, 8, 16, 32, 64, 128)
BATCH_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 31, 32, 64)
METHODS = ("idlg", "yin", "llg", "ilrg", "bias", "bias+aux", "auto (B hidden)")
BATCH_SIZE_VARIANT = "batch-size estimate"
AUXILIARY = 1000
CIFAR10_JPEG = "cifar10/test_jpeg_q75.npz"
MNIST_NORM = {"mean": (0.1307,), "std": (0.3081,)}
TARGET = (
    "issue target for untrained FC on MNIST (iLRG's published numbers): 1.0 at B=8/16, 0.80 at "
    "32, 0.60 at 64; aim 1.0 up to 64"
)

ProgressFactory = Callable[[str, int], Callable[[int, int, float], None]]


@dataclass(frozen=True)
class Setup:
    """One model on one data set, e.g. ``mlp4/mnist``."""

    name: str
    model: str
    data: str | Path
    image_size: int
    channels: int
    model_kwargs: dict = field(default_factory=dict)

    def build(self, seed: int, num_classes: int) -> ImageClassifier:
        return build_model(
            self.model,
            num_classes=num_classes,
            in_channels=self.channels,
            image_size=self.image_size,
            seed=seed,
            **self.model_kwargs,
        )


def setups(images: str | Path | None = None) -> tuple[Setup, ...]:
    """The sweep's models and data: MNIST for the FC nets, CIFAR-10 JPEGs for LeNet by default.

    With ``images`` (a spec for :func:`gradleak.data.load_images`), every model runs on those
    images instead, converted to its input: 28x28 gray for ``mlp4`` and ``fc_relu``, 32x32 RGB for
    ``lenet``; the setups are named ``MODEL/NAME`` after the data set name or file stem.
    """
    fc_data: str | Path = "mnist" if images is None else images
    lenet_data = shared_file(CIFAR10_JPEG) if images is None else images
    fc_tag = "mnist" if images is None else _data_name(images)
    lenet_tag = "cifar10" if images is None else _data_name(images)
    return (
        Setup(f"mlp4/{fc_tag}", "mlp4", fc_data, 28, 1),
        Setup(f"fc_relu/{fc_tag}", "fc_relu", fc_data, 28, 1, MNIST_NORM),
        Setup(f"lenet/{lenet_tag}", "lenet", lenet_data, 32, 3),
    )


def run_label_sweep(
    out: str | Path,
    *,
    images: str | Path | None = None,
    n_images: int | None = None,
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    trials: int = 10,
    label_sizes: Sequence[int] = LABEL_SIZES,
    batch_size_sweep: Sequence[int] = BATCH_SIZES,
) -> dict:
    """Run the label-recovery and batch-size-estimation sweep; write ``out/results.json``.

    Args:
        out: output folder; ``results.json`` (one case per cell) and ``table.md`` are written.
        images: run on these images (a :func:`gradleak.data.load_images` spec) instead of the
            defaults (MNIST for the FC nets, the shared CIFAR-10 JPEG test set for LeNet); see
            :func:`setups`. The auxiliary hold-out is ``min(1000, N // 2)`` of the ``N`` images.
        n_images: draw batches from at most this many images (after the auxiliary hold-out);
            cells whose batch size exceeds the pool are skipped.
        iterations, restarts: unused (nothing is optimized); accepted for the preset call.
        seed: picks the auxiliary split and the batches; the model of trial ``t`` is always
            initialized with seed ``t``.
        progress: ``progress(case_id, trials) -> callback(done, total, value)``, called once per
            cell computed; ``value`` is the running label accuracy (exact-match rate for the
            batch-size cells).
        trials: trials per cell, each a fresh model and a fresh batch.
        label_sizes: batch sizes of the label-recovery cells.
        batch_size_sweep: batch sizes of the batch-size-estimation cells.

    Returns:
        The results dictionary written to ``out/results.json``: ``preset``, ``settings``,
        ``versions``, ``cases`` and ``summary`` (with ``by_variant``). Label cells have id
        ``MODEL/DATA/METHOD/B=n``; batch-size cells ``MODEL/DATA/batch-size/B=n`` and variant
        ``"batch-size estimate"``.
    """
    del iterations, restarts
    out = Path(out)
    settings = {
        "trials": trials,
        "seed": seed,
        "label_batch_sizes": list(label_sizes),
        "batch_size_sweep": list(batch_size_sweep),
        "auxiliary_images": AUXILIARY,
        "images": None if images is None else str(images),
        "n_images": n_images,
        "methods": list(METHODS),
        "target": TARGET,
    }
    all_setups = setups(images)
    settings["setups"] = [s.name for s in all_setups]
    results = ResultsFile(out / "results.json", PRESET, settings, group_keys=("variant",))
    loaded: dict[tuple, ImageSet] = {}
    for setup in all_setups:
        cells = [
            (_label_id(setup, method, size), method, size)
            for size in label_sizes
            for method in METHODS
            if method != "idlg" or size == 1
        ]
        cells += [
            (_batch_size_id(setup, size), BATCH_SIZE_VARIANT, size) for size in batch_size_sweep
        ]
        pending = [cell for cell in cells if results.done(cell[0]) is None]
        if not pending:
            continue
        key = (str(setup.data), setup.image_size, setup.channels)
        if key not in loaded:
            loaded[key] = load_images(setup.data, size=setup.image_size, channels=setup.channels)
        data = loaded[key]
        auxiliary, pool = _split(data, seed, n_images)
        num_classes = max(10, len(data.class_names), int(data.labels.max()) + 1)
        for case_id, variant, size in pending:
            if size > len(pool):
                continue
            callback = progress(case_id, trials) if progress else None
            start = time.perf_counter()
            if variant == BATCH_SIZE_VARIANT:
                case = _batch_size_cell(
                    setup, num_classes, data, pool, size, trials, seed, callback
                )
            else:
                case = _label_cell(
                    setup, num_classes, variant, data, pool, auxiliary, size, trials, seed, callback
                )
            results.add(
                {
                    "id": case_id,
                    "variant": variant,
                    "model": setup.name,
                    "batch_size": size,
                    "trials": trials,
                    "psnr": None,
                    "ssim": None,
                    **case,
                    "pool_size": len(pool),
                    "auxiliary_images": len(auxiliary),
                    "seconds": time.perf_counter() - start,
                }
            )
    summary = results.as_dict()
    (out / "table.md").write_text(markdown(summary))
    return summary


def _label_id(setup: Setup, method: str, size: int) -> str:
    return f"{setup.name}/{method}/B={size}"


def _batch_size_id(setup: Setup, size: int) -> str:
    return f"{setup.name}/batch-size/B={size}"


def _data_name(spec: str | Path) -> str:
    text = str(spec).strip()
    if text.lower() in DATASETS or text.lower() == "bundled":
        name = text.lower()
    else:
        name = "images" if "," in text else Path(text).stem
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name) or "images"


def _split(data: ImageSet, seed: int, n_images: int | None) -> tuple[ImageSet, torch.Tensor]:
    """The attacker's auxiliary images and the indices batches are drawn from."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    held_out = min(AUXILIARY, len(data) // 2)
    pool = order[held_out:]
    return data.subset(order[:held_out]), pool if n_images is None else pool[:n_images]


def _batch(data: ImageSet, pool: torch.Tensor, size: int, trial: int, seed: int, salt: int):
    generator = torch.Generator().manual_seed(seed * 1_000_003 + salt * 10_007 + size * 101 + trial)
    chosen = pool[torch.randperm(len(pool), generator=generator)[:size]]
    return data.images[chosen], data.labels[chosen]


def _recover(
    method: str, observation: Observation, model: ImageClassifier, auxiliary: ImageSet
) -> Callable[[], LabelRecovery]:
    """The attacker's call for ``method`` (labels hidden; ``auto`` also without the batch size)."""
    if method == "auto (B hidden)":
        # the hidden fact is falsified: nothing may read it
        hidden = dataclasses.replace(observation, knows_batch_size=False, batch_size=-1)
        view = hidden.attacker_view()
        return lambda: recover_labels(view, model)
    view = observation.attacker_view()
    if method == "idlg":
        return lambda: recover_labels(view, model, method="idlg")
    if method == "bias+aux":
        return lambda: bias(
            view, model, auxiliary_images=auxiliary.images, auxiliary_labels=auxiliary.labels
        )
    function = {"yin": yin, "llg": llg, "ilrg": ilrg, "bias": bias}[method]
    return lambda: function(view, model)


def _label_cell(
    setup, num_classes, method, data, pool, auxiliary, size, trials, seed, callback
) -> dict:
    scores, exact, seconds = [], [], []
    for trial in range(trials):
        model = setup.build(trial, num_classes)
        images, labels = _batch(data, pool, size, trial, seed, salt=1)
        run = _recover(method, observe(model, images, labels, knows_labels=False), model, auxiliary)
        tick = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - tick)
        scores.append(label_accuracy(result.labels, labels))
        exact.append(Counter(result.labels.tolist()) == Counter(labels.tolist()))
        if callback:
            callback(trial + 1, trials, statistics.fmean(scores))
    return {
        "label_accuracy": statistics.fmean(scores),
        "label_accuracy_min": min(scores),
        "exact_batches": statistics.fmean(exact),
        "method_seconds_median": statistics.median(seconds),
    }


def _batch_size_cell(setup, num_classes, data, pool, size, trials, seed, callback) -> dict:
    hits, claims, wrong_claims, estimators, estimates = 0, 0, 0, Counter(), []
    for trial in range(trials):
        model = setup.build(trial, num_classes)
        images, labels = _batch(data, pool, size, trial, seed, salt=2)
        observation = observe(model, images, labels, knows_labels=False, knows_batch_size=False)
        view = dataclasses.replace(observation, batch_size=-1).attacker_view()
        estimate, details = estimate_batch_size(view, model, return_details=True)
        estimates.append(estimate)
        hits += estimate == size
        claims += details["exact"]
        wrong_claims += details["exact"] and estimate != size
        estimators[details["method"]] += 1
        if callback:
            callback(trial + 1, trials, hits / (trial + 1))
    return {
        "label_accuracy": None,
        "exact_match": hits / trials,
        "claimed_exact": claims / trials,
        "wrong_exact_claims": wrong_claims,
        "estimators": dict(estimators),
        "estimates": estimates,
    }


def label_rows(results: dict) -> list[dict]:
    """Label cells grouped per (model/data, batch size), in sweep order.

    Each row: ``model``, ``batch_size``, ``trials`` and ``methods`` (method -> label accuracy
    mean and minimum, fraction of exact batches, median seconds of one recovery).
    """
    settings, cases = results["settings"], {c["id"]: c for c in results["cases"]}
    rows = []
    for name in settings["setups"]:
        for size in settings["label_batch_sizes"]:
            row = {"model": name, "batch_size": size, "trials": settings["trials"], "methods": {}}
            for method in settings["methods"]:
                case = cases.get(f"{name}/{method}/B={size}")
                if case is not None:
                    row["methods"][method] = {
                        "label_accuracy": case["label_accuracy"],
                        "label_accuracy_min": case["label_accuracy_min"],
                        "exact_batches": case["exact_batches"],
                        "seconds_median": case["method_seconds_median"],
                    }
            if row["methods"]:
                rows.append(row)
    return rows


def batch_size_rows(results: dict) -> list[dict]:
    """Batch-size cells in sweep order: ``model``, ``batch_size``, ``trials``, ``exact_match``,
    ``claimed_exact``, ``wrong_exact_claims``, ``methods`` (estimator -> trials it decided) and
    ``estimates``."""
    settings, cases = results["settings"], {c["id"]: c for c in results["cases"]}
    rows = []
    for name in settings["setups"]:
        for size in settings["batch_size_sweep"]:
            case = cases.get(f"{name}/batch-size/B={size}")
            if case is not None:
                rows.append(
                    {
                        "model": name,
                        "batch_size": size,
                        "trials": case["trials"],
                        "exact_match": case["exact_match"],
                        "claimed_exact": case["claimed_exact"],
                        "wrong_exact_claims": case["wrong_exact_claims"],
                        "methods": case["estimators"],
                        "estimates": case["estimates"],
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
        f"`yin` returns distinct labels only (at most 10); `bias+aux` uses "
        f"{settings['auxiliary_images']:,} held-out test images with labels; `auto (B hidden)` "
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
