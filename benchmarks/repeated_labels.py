"""Benchmark: batches with repeated labels recovered by unmixing the first FC layer (FCUnmix).

For every batch size B and two compositions, ``repeated`` (all B images of one CIFAR-10 class)
and ``mixed`` (classes in turn: all distinct for B <= 10), a few trials each: build mlp4 (4
sigmoid FC layers, width 256, a new seed per trial), simulate one client step on held-out
CIFAR-10 test images (JPEG copies with within-class index >= 500; tuning used the others, never
the 20 lossless test images), run FCUnmix's exact unmixing and the Cocktail Party Attack baseline
(``method="cpa"``), and score after optimal matching. Writes ``OUT/repeated_labels.json`` and
``OUT/repeated_labels.md``; an interrupted run resumes after the cases already recorded.

    python benchmarks/repeated_labels.py [--out benchmarks/results] [--sizes 4,8,16,32,64]
        [--trials 3] [--width 256] [--methods exact,cpa]

Set GRADLEAK_SHARED_DATA to the data folder if it is not found automatically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gradleak.attacks.fc_unmix import FCUnmix
from gradleak.data import load_images, shared_data_dir
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.report import environment, write_json
from gradleak.threat import observe

DATA = Path("cifar10", "test_jpeg_q75.npz")
HELD_OUT_FROM = 500  # within-class index: images below it were used for tuning
COMPOSITIONS = ("repeated", "mixed")
METHODS = {
    "exact": {"method": "exact"},
    "cpa": {"method": "cpa", "iterations": 1000},
}
TARGET = "repeated, B = 16: mean PSNR >= 20 dB"
NAIVE_FASTICA = {4: 15.4, 8: 13.7, 16: 11.5, 32: 10.5, 64: 10.2}  # shared/notes, one class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sizes", default="4,8,16,32,64")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",")
    settings = {
        "model": "mlp4",
        "width": args.width,
        "image_size": 32,
        "data": str(DATA),
        "held_out_from_within_class_index": HELD_OUT_FROM,
        "methods": {m: METHODS[m] for m in methods},
        "trials": args.trials,
    }
    json_path = args.out / "repeated_labels.json"
    cases = _resume(json_path, settings)
    images, labels, within = _load()

    for size in sizes:
        for composition in COMPOSITIONS:
            for trial in range(args.trials):
                index = _select(labels, within, size, composition, trial)
                model = build_model("mlp4", width=args.width, image_size=32, seed=trial)
                obs = observe(model, images[index], labels[index])
                for method in methods:
                    case_id = f"{method}-B{size}-{composition}-t{trial}"
                    if case_id in cases:
                        continue
                    attack = FCUnmix(**{k: v for k, v in METHODS[method].items()})
                    start = time.perf_counter()
                    rec = attack(obs, seed=trial)
                    seconds = time.perf_counter() - start
                    score = score_batch(rec.images, obs.truth.images, rec.labels, obs.truth.labels)
                    cases[case_id] = {
                        "id": case_id,
                        "method": method,
                        "batch_size": size,
                        "composition": composition,
                        "trial": trial,
                        "model_seed": trial,
                        "classes": sorted(set(labels[index].tolist())),
                        "image_index": index.tolist(),
                        "psnr": float(score.psnr.mean()),
                        "psnr_median": float(score.psnr.median()),
                        "psnr_min": float(score.psnr.min()),
                        "ssim": float(score.ssim.mean()),
                        "label_accuracy": score.label_accuracy,
                        "gradient_distance": rec.gradient_distance,
                        "iterations": rec.iterations,
                        "seconds": seconds,
                        "psnr_per_image": [round(float(v), 2) for v in score.psnr],
                    }
                    print(
                        f"{case_id}: {cases[case_id]['psnr']:.1f} dB, "
                        f"SSIM {cases[case_id]['ssim']:.3f}, {seconds:.1f} s",
                        flush=True,
                    )
                    _write(args.out, settings, cases)
    _write(args.out, settings, cases)


def _load():
    data = np.load(shared_data_dir() / DATA, allow_pickle=False)
    images = load_images(shared_data_dir() / DATA).images
    return images, torch.as_tensor(data["labels"]), torch.as_tensor(data["within_class_index"])


def _select(labels, within, size: int, composition: str, trial: int) -> torch.Tensor:
    """Held-out image indices: one class (``repeated``) or classes in turn (``mixed``), without
    repeats; each trial takes the next images (and, for ``repeated``, another class)."""
    pools = [torch.nonzero((labels == c) & (within >= HELD_OUT_FROM)).flatten() for c in range(10)]
    if composition == "repeated":
        return pools[(3 * trial + size) % 10][trial * size : (trial + 1) * size]
    per_class = -(-size // 10)
    return torch.stack([pools[k % 10][trial * per_class + k // 10] for k in range(size)])


def _resume(path: Path, settings: dict) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if old.get("settings") != json.loads(json.dumps(settings)):
        return {}
    return {c["id"]: c for c in old.get("cases", [])}


def _summary(cases: dict[str, dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for case in cases.values():
        key = (case["method"], case["batch_size"], case["composition"])
        groups.setdefault(key, []).append(case)
    rows = []
    for (method, size, composition), part in sorted(
        groups.items(), key=lambda item: (item[0][1], item[0][2] != "repeated", item[0][0])
    ):
        per_image = [v for c in part for v in c["psnr_per_image"]]
        rows.append(
            {
                "method": method,
                "batch_size": size,
                "composition": composition,
                "trials": len(part),
                "psnr_mean": statistics.fmean(c["psnr"] for c in part),
                "psnr_median": statistics.median(per_image),
                "psnr_min": min(per_image),
                "ssim_mean": statistics.fmean(c["ssim"] for c in part),
                "label_accuracy": statistics.fmean(c["label_accuracy"] for c in part),
                "seconds_mean": statistics.fmean(c["seconds"] for c in part),
                "iterations_mean": statistics.fmean(c["iterations"] for c in part),
            }
        )
    return rows


def _write(out: Path, settings: dict, cases: dict[str, dict]) -> None:
    rows = _summary(cases)
    report = {
        "benchmark": "repeated_labels",
        "target": TARGET,
        "settings": settings,
        "versions": environment(),
        "summary": rows,
        "cases": list(cases.values()),
    }
    write_json(out / "repeated_labels.json", report)
    (out / "repeated_labels.md").write_text(_markdown(rows, report))


def _markdown(rows: list[dict], report: dict) -> str:
    versions = report["versions"]
    lines = [
        "# Repeated labels: unmixing the first fully-connected layer (FCUnmix)",
        "",
        f"mlp4 (4 sigmoid FC layers, width {report['settings']['width']}), random init (seed = "
        "trial), CIFAR-10 test images (JPEG copies, held out: within-class index >= "
        f"{HELD_OUT_FROM}), cross-entropy averaged over the batch, labels known. Scores after "
        "optimal matching (Hungarian on MSE); PSNR capped at 200 dB. `exact`: Levenberg-Marquardt "
        "on the first layer's self-consistency equation (default settings); `cpa`: Cocktail "
        "Party Attack ICA (1000 Adam steps, TV 0.2, decorrelation 1). `repeated`: one class; "
        "`mixed`: classes in turn (all distinct for B <= 10). Seconds on one CPU thread "
        f"(torch {versions['torch']}, {versions['platform']}, shared machine).",
        "",
        f"Target: {TARGET}.",
        "",
        "| method | B | batch | trials | mean PSNR | median PSNR | min PSNR | SSIM | labels "
        "| s / batch | iterations |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {r['composition']} | {r['trials']} "
            f"| {r['psnr_mean']:.1f} | {r['psnr_median']:.1f} | {r['psnr_min']:.1f} "
            f"| {r['ssim_mean']:.3f} | {r['label_accuracy']:.2f} | {r['seconds_mean']:.1f} "
            f"| {r['iterations_mean']:.0f} |"
        )
    lines += [
        "",
        "For reference (shared/notes/fc-gradient-subspace.md: one class, a ReLU MLP "
        "3072-512-256-128-10): scikit-learn FastICA on the same subspace gave "
        + ", ".join(f"{v} dB at B = {k}" for k, v in NAIVE_FASTICA.items())
        + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
