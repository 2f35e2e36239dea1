"""Benchmark: batches behind ReLU recovered by unmixing the first FC layer (FCUnmix, sparse).

For ``fc_relu`` (width 300) at every batch size B and ``mlp4_relu`` (width 256) at B = 16, two
compositions, ``repeated`` (all B images of one CIFAR-10 class) and ``mixed`` (classes in turn:
all distinct for B <= 10), a few trials each (seed = trial for the model and the attack): simulate
one client step on held-out CIFAR-10 test images (JPEG copies, within-class index >= 500) with
labels and batch size hidden from the attacker, run the variants below and score after optimal
matching. Writes ``OUT/relu_unmix.json`` and ``OUT/relu_unmix.md``; an interrupted run resumes
after the cases already recorded.

Variants: ``sparse`` (the default behind ReLU: descent on the ReLU outputs' span, then SPEAR's
sampling, then completion), ``spear`` (the descent off: SPEAR's random rows alone, 100,000 draws
at most, then completion; at B <= 16) and ``exact`` (the self-consistency solve, the method
before, at B = 16).

    python benchmarks/relu_unmix.py [--out benchmarks/results] [--sizes 4,8,16,32] [--trials 3]
        [--threads 1]

Set GRADLEAK_SHARED_DATA to the data folder if it is not found automatically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from repeated_labels import DATA, HELD_OUT_FROM, _load, _resume, _select

from gradleak.attacks.fc_unmix import FCUnmix
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.report import environment, write_json
from gradleak.threat import observe

COMPOSITIONS = ("repeated", "mixed")
VARIANTS = {
    "sparse": {"method": "sparse"},
    "spear": {"method": "sparse", "starts": 0},
    "exact": {"method": "exact"},
}
WIDTHS = {"fc_relu": 300, "mlp4_relu": 256}
TARGET = "fc_relu, repeated, B = 16, labels and batch size hidden: mean PSNR >= 30 dB"


def plan(sizes: list[int]) -> list[tuple[str, int, str]]:
    """(model, B, variant) of every case group."""
    cases = [("fc_relu", size, "sparse") for size in sizes]
    cases += [("fc_relu", size, "spear") for size in sizes if size <= 16]
    cases += [("fc_relu", 16, "exact"), ("mlp4_relu", 16, "sparse"), ("mlp4_relu", 16, "spear")]
    return cases + [("mlp4_relu", 16, "exact")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--sizes", default="4,8,16,32")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = {
        "models": WIDTHS,
        "image_size": 32,
        "data": str(DATA),
        "held_out_from_within_class_index": HELD_OUT_FROM,
        "variants": VARIANTS,
        "plan": plan(sizes),
        "trials": args.trials,
        "threat": "labels and batch size hidden",
    }
    command = " ".join([f"OMP_NUM_THREADS={args.threads}", "python", *sys.argv])
    json_path = args.out / "relu_unmix.json"
    cases = _resume(json_path, settings)
    images, labels, within = _load()

    for name, size, variant in plan(sizes):
        for composition in COMPOSITIONS:
            for trial in range(args.trials):
                case_id = f"{name}-{variant}-B{size}-{composition}-t{trial}"
                if case_id in cases:
                    continue
                index = _select(labels, within, size, composition, trial)
                model = build_model(name, width=WIDTHS[name], image_size=32, seed=trial)
                obs = observe(
                    model,
                    images[index],
                    labels[index],
                    knows_labels=False,
                    knows_batch_size=False,
                )
                start = time.perf_counter()
                rec = FCUnmix(**VARIANTS[variant])(obs, seed=trial)
                seconds = time.perf_counter() - start
                truth = obs.truth
                right_size = len(rec.images) == size
                score = (
                    score_batch(rec.images, truth.images, rec.labels, truth.labels)
                    if right_size
                    else None
                )
                cases[case_id] = {
                    "id": case_id,
                    "model": name,
                    "variant": variant,
                    "batch_size": size,
                    "composition": composition,
                    "trial": trial,
                    "classes": sorted(set(labels[index].tolist())),
                    "image_index": index.tolist(),
                    "batch_size_correct": right_size,
                    "psnr": float(score.psnr.mean()) if score else None,
                    "psnr_median": float(score.psnr.median()) if score else None,
                    "psnr_min": float(score.psnr.min()) if score else None,
                    "ssim": float(score.ssim.mean()) if score else None,
                    "label_accuracy": score.label_accuracy if score else None,
                    "labels_paired": float(
                        (rec.labels[score.order] == truth.labels).double().mean()
                    )
                    if score
                    else None,
                    "gradient_distance": rec.gradient_distance,
                    "found": rec.notes.get("sparse"),
                    "seconds": seconds,
                    "psnr_per_image": [round(float(v), 2) for v in score.psnr] if score else [],
                }
                print(
                    f"{case_id}: {cases[case_id]['psnr']:.1f} dB, "
                    f"SSIM {cases[case_id]['ssim']:.3f}, {seconds:.1f} s, "
                    f"{rec.notes.get('sparse', '')}",
                    flush=True,
                )
                _write(args.out, settings, cases, command)
    _write(args.out, settings, cases, command)


def _summary(cases: dict[str, dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for case in cases.values():
        key = (case["model"], case["batch_size"], case["composition"], case["variant"])
        groups.setdefault(key, []).append(case)
    order = {"sparse": 0, "spear": 1, "exact": 2}
    rows = []
    for (name, size, composition, variant), part in sorted(
        groups.items(),
        key=lambda item: (item[0][0], item[0][1], item[0][2] != "repeated", order[item[0][3]]),
    ):
        scored = [c for c in part if c["psnr"] is not None]
        per_image = [v for c in scored for v in c["psnr_per_image"]]
        found = [c["found"] for c in part if c.get("found")]
        rows.append(
            {
                "model": name,
                "variant": variant,
                "batch_size": size,
                "composition": composition,
                "trials": len(part),
                "psnr_mean": statistics.fmean(c["psnr"] for c in scored) if scored else None,
                "psnr_median": statistics.median(per_image) if per_image else None,
                "psnr_min": min(per_image) if per_image else None,
                "ssim_mean": statistics.fmean(c["ssim"] for c in scored) if scored else None,
                "label_accuracy": statistics.fmean(c["label_accuracy"] for c in scored)
                if scored
                else None,
                "labels_paired": statistics.fmean(c["labels_paired"] for c in scored)
                if scored
                else None,
                "batch_size_correct": sum(c["batch_size_correct"] for c in part),
                "seconds_mean": statistics.fmean(c["seconds"] for c in part),
                "missing": sum(f["missing"] for f in found) if found else None,
                "draws_mean": statistics.fmean(f["draws"] for f in found) if found else None,
            }
        )
    return rows


def _write(out: Path, settings: dict, cases: dict[str, dict], command: str) -> None:
    rows = _summary(cases)
    report = {
        "benchmark": "relu_unmix",
        "target": TARGET,
        "command": command,
        "settings": settings,
        "versions": environment(),
        "summary": rows,
        "cases": list(cases.values()),
    }
    write_json(out / "relu_unmix.json", report)
    (out / "relu_unmix.md").write_text(_markdown(rows, report))


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _markdown(rows: list[dict], report: dict) -> str:
    versions = report["versions"]
    lines = [
        "# Batches behind ReLU: sparse unmixing of the first fully-connected layer (FCUnmix)",
        "",
        "fc_relu (Flatten -> 3072-300 -> ReLU -> 300-300 -> ReLU -> 300-10) and mlp4_relu (mlp4's "
        "four layers, width 256, with ReLU), CIFAR-10 normalization, PyTorch default init "
        "(seed = trial), CIFAR-10 test images (JPEG copies, held out: within-class index >= "
        f"{HELD_OUT_FROM}), cross-entropy averaged over the batch, one gradient step; labels and "
        "batch size hidden from the attacker (batch size from the gradient's rank, labels "
        "recovered). `repeated`: one class; `mixed`: classes in turn (all distinct for B <= 10). "
        "Scores after optimal matching (Hungarian on MSE); PSNR capped at 200 dB. `labels`: "
        "label multiset recovered; `paired`: each matched image's label right. `missing`: "
        "samples whose sparse direction was not found (all trials). `sparse`: default settings "
        "(descent on the ReLU outputs' span, 4 starts per missing sample, then SPEAR sampling, "
        "then completion); `spear`: the descent off (`starts=0`), SPEAR's random (B - 1)-row "
        "subsets alone, at most 100,000 draws, then completion; `exact`: the self-consistency "
        "solve (Levenberg-Marquardt, default settings), the method before.",
        "",
        f"Seconds on {versions['torch_threads']} CPU thread(s) of a shared machine (torch "
        f"{versions['torch']}, scipy {versions['scipy']}, python {versions['python']}, "
        f"{versions['platform']}).",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Target: {TARGET}.",
        "",
        "| model | variant | B | batch | trials | mean PSNR | median PSNR | min PSNR | SSIM "
        "| labels | paired | B right | missing | draws | s / batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['batch_size']} | {r['composition']} "
            f"| {r['trials']} | {_number(r['psnr_mean'])} | {_number(r['psnr_median'])} "
            f"| {_number(r['psnr_min'])} | {_number(r['ssim_mean'], 3)} "
            f"| {_number(r['label_accuracy'], 2)} | {_number(r['labels_paired'], 2)} "
            f"| {r['batch_size_correct']}/{r['trials']} "
            f"| {'-' if r['missing'] is None else r['missing']} "
            f"| {_number(r['draws_mean'], 0)} | {r['seconds_mean']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
