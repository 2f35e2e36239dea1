"""Benchmark: repeated-label batches on CNNs, unmixed through their features (FeatureUnmix).

The reference write-up shows every algorithm failing on LeNet when a batch's images share a
label. For each cell, a few trials: build the model (seed = trial), simulate one client step on
held-out CIFAR-10 test images of ONE class (JPEG copies, within-class index >= 500), hide labels
and batch size from the attacker, run the attack and score after optimal matching.

- LeNet (DLG's sigmoid LeNet, U(-0.5, 0.5) init: the write-up's setting), B = 2, 4, 8:
  ``feature_unmix``; at B = 2 also the write-up's DLG (l2, L-BFGS, 200 steps, labels known).
- ConvNet (ReLU + BatchNorm in train mode), B = 2: ``feature_unmix`` against Inverting
  Gradients given the same wall time (its step count calibrated on the case).

Writes ``OUT/repeated_labels_cnn.json`` and ``.md``; an interrupted run resumes after the cases
already recorded. Run with one thread per process:

    OMP_NUM_THREADS=1 python benchmarks/repeated_labels_cnn.py [--out benchmarks/results]
        [--cells lenet-2,lenet-4,lenet-8,convnet-2] [--trials 10,5,3,3] [--convnet-width 16]

Set GRADLEAK_SHARED_DATA to the data folder if it is not found automatically.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from repeated_labels import HELD_OUT_FROM, _load, _resume, _select

from gradleak.analysis.rank import layer_rank_analysis
from gradleak.attacks import get_attack
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.report import environment, write_json
from gradleak.threat import observe

TARGETS = {
    ("lenet", 2): 30.0,
    ("lenet", 4): 25.0,
    ("lenet", 8): 20.0,
}
DLG_STEPS = 200
CALIBRATION_STEPS = 10
# ConvNet's double backward costs ~0.1 s per evaluation on one thread: one round of 20 x 20 Adam
# steps per resolution (the default budget would take ~15 minutes per case).
CONVNET_BUDGET = {"iterations": 20, "rounds": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--cells", default="lenet-2,lenet-4,lenet-8,convnet-2")
    parser.add_argument("--trials", default="10,5,3,3")
    parser.add_argument("--convnet-width", type=int, default=16)
    parser.add_argument("--baseline-trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cells = [(c.split("-")[0], int(c.split("-")[1])) for c in args.cells.split(",")]
    trials = [int(t) for t in args.trials.split(",")]
    settings = {
        "data": "cifar10/test_jpeg_q75.npz",
        "held_out_from_within_class_index": HELD_OUT_FROM,
        "composition": "one class per batch",
        "knows_labels": False,
        "knows_batch_size": False,
        "convnet_width": args.convnet_width,
        "dlg_steps": DLG_STEPS,
        "convnet_feature_unmix": CONVNET_BUDGET,
        "threads": 1,
        "feature_unmix": dataclasses.asdict(get_attack("feature_unmix").settings),
    }
    json_path = args.out / "repeated_labels_cnn.json"
    cases = _resume(json_path, settings)
    ranks: dict[str, list[dict]] = {}
    images, labels, within = _load()
    for (model_name, size), count in zip(cells, trials, strict=True):
        for trial in range(count):
            index = _select(labels, within, size, "repeated", trial)
            width = args.convnet_width if model_name == "convnet" else None
            model = build_model(model_name, width=width, seed=trial)
            hidden = observe(
                model, images[index], labels[index], knows_labels=False, knows_batch_size=False
            )
            if trial == 0 and model_name == "convnet":  # where the body discards information
                ranks[f"{model_name}-B{size}"] = layer_rank_analysis(hidden, batch_size=size)
            methods = ["feature_unmix"]
            if model_name == "lenet" and size == 2 and trial < args.baseline_trials:
                methods.append("dlg")
            if model_name == "convnet":
                methods.append("inverting_gradients")
            for method in methods:
                case_id = f"{method}-{model_name}-B{size}-t{trial}"
                if case_id in cases:
                    continue
                budget = cases.get(f"feature_unmix-{model_name}-B{size}-t{trial}", {})
                case = _run(method, model, hidden, images[index], labels[index], trial, budget)
                case.update(id=case_id, model=model_name, batch_size=size, trial=trial,
                            width=model.config["width"], image_index=index.tolist())  # fmt: skip
                cases[case_id] = case
                print(f"{case_id}: {case['psnr_median']:.1f} dB median, {case['seconds']:.0f} s",
                      flush=True)  # fmt: skip
                _write(args.out, settings, cases, ranks)
    _write(args.out, settings, cases, ranks)


def _run(method, model, hidden, truth_images, truth_labels, trial, budget) -> dict:
    """One attack on one case; DLG sees the labels (the write-up's setting), the rest do not."""
    observation = hidden
    options: dict = {}
    if method == "dlg":
        observation = observe(model, truth_images, truth_labels)
        options = {"labels": "known", "iterations": DLG_STEPS}
    elif method == "feature_unmix" and model.config["name"] == "convnet":
        options = dict(CONVNET_BUDGET)
    elif method == "inverting_gradients":
        probe = get_attack(method, iterations=CALIBRATION_STEPS, estimate_batch_size=True)
        start = time.perf_counter()
        probe(hidden, seed=trial)
        per_step = (time.perf_counter() - start) / CALIBRATION_STEPS
        steps = max(CALIBRATION_STEPS, int(budget["seconds"] / per_step))
        options = {"iterations": steps, "estimate_batch_size": True}
    attack = get_attack(method, **options)
    start = time.perf_counter()
    reconstruction = attack(observation, seed=trial)
    seconds = time.perf_counter() - start
    found, found_labels = reconstruction.images, reconstruction.labels
    if len(found) < len(truth_images):  # batch size underestimated: the rest scored as gray
        missing = len(truth_images) - len(found)
        found = torch.cat([found, torch.full((missing, *found.shape[1:]), 0.5)])
        found_labels = torch.cat([found_labels, torch.full((missing,), -1)])
    score = score_batch(found, truth_images, found_labels, truth_labels)
    return {
        "method": method,
        "options": options,
        "psnr": float(score.psnr.mean()),
        "psnr_median": float(score.psnr.median()),
        "psnr_per_image": [round(float(v), 2) for v in score.psnr],
        "ssim": float(score.ssim.mean()),
        "label_accuracy": score.label_accuracy,
        "batch_size_found": len(reconstruction.images),
        "gradient_distance": reconstruction.gradient_distance,
        "iterations": reconstruction.iterations,
        "seconds": seconds,
        "notes": reconstruction.notes,
    }


def _summary(cases: dict[str, dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for case in cases.values():
        groups.setdefault((case["model"], case["batch_size"], case["method"]), []).append(case)
    rows = []
    for (model_name, size, method), part in sorted(groups.items()):
        per_image = [v for c in part for v in c["psnr_per_image"]]
        target = TARGETS.get((model_name, size)) if method == "feature_unmix" else None
        median = statistics.median(per_image)
        rows.append(
            {
                "model": model_name,
                "batch_size": size,
                "method": method,
                "trials": len(part),
                "psnr_median": median,
                "psnr_mean": statistics.fmean(per_image),
                "psnr_min": min(per_image),
                "ssim_mean": statistics.fmean(c["ssim"] for c in part),
                "label_accuracy": statistics.fmean(c["label_accuracy"] for c in part),
                "batch_size_correct": statistics.fmean(c["batch_size_found"] == size for c in part),
                "seconds_mean": statistics.fmean(c["seconds"] for c in part),
                "target_median_psnr": target,
                "met": None if target is None else median >= target,
            }
        )
    return rows


def _write(out: Path, settings: dict, cases: dict[str, dict], ranks: dict) -> None:
    rows = _summary(cases)
    report = {
        "benchmark": "repeated_labels_cnn",
        "settings": settings,
        "versions": environment(),
        "summary": rows,
        "cases": list(cases.values()),
        "layer_ranks": ranks,
    }
    write_json(out / "repeated_labels_cnn.json", report)
    versions = report["versions"]
    lines = [
        "# Repeated labels on CNNs: unmixing the head's features (feature_unmix)",
        "",
        "`OMP_NUM_THREADS=1 python benchmarks/repeated_labels_cnn.py`",
        "",
        "One CIFAR-10 class per batch (held-out JPEG test images, within-class index >= "
        f"{HELD_OUT_FROM}), model seed = trial, labels and batch size hidden from the attacker "
        "(recovered by gradleak) except for DLG, which is given the labels as in the write-up. "
        "PSNR over every image after optimal matching; ConvNet width "
        f"{settings['convnet_width']}, BatchNorm in train mode; Inverting Gradients gets "
        "feature_unmix's wall time on the same case. One thread "
        f"(torch {versions['torch']}, {versions['platform']}, shared 2-core machine).",
        "",
        "| model | B | method | trials | median PSNR | mean | min | SSIM | labels | batch size "
        "| s / batch | target (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = "" if r["target_median_psnr"] is None else (
            f">= {r['target_median_psnr']:.0f} dB: {'met' if r['met'] else 'NOT met'}")  # fmt: skip
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['method']} | {r['trials']} "
            f"| {r['psnr_median']:.1f} | {r['psnr_mean']:.1f} | {r['psnr_min']:.1f} "
            f"| {r['ssim_mean']:.3f} | {r['label_accuracy']:.2f} | {r['batch_size_correct']:.2f} "
            f"| {r['seconds_mean']:.0f} | {target} |"
        )
    for cell, layers in ranks.items():
        lines += [
            "",
            f"Where {cell} discards information (`layer_rank_analysis`, R-GAP's per-layer "
            "systems for the whole batch; gradient constraints only behind BatchNorm/ReLU):",
            "",
            "| layer | unknowns | equations | rank | discarded |",
            "|---|---|---|---|---|",
            *(f"| {r['name']} | {r['unknowns']} | {r['equations']} | {r['rank']} "
              f"| {r['discarded']} ({r['discarded_fraction']:.0%}) |" for r in layers),
        ]  # fmt: skip
    (out / "repeated_labels_cnn.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
