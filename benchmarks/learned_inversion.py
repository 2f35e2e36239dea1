"""Benchmark: the ``learned-inversion`` study (learned inverter vs Inverting Gradients on LeNet).

Trains the inverters (cached and resumable under ``OUT/runs/learned-inversion/artifacts``), runs
the study and writes ``OUT/learned_inversion.json`` and ``OUT/learned_inversion.md``:
PSNR/SSIM per batch size for the inverter alone, Inverting Gradients and IG started from the
inverter; the iterations IG needs to reach its final PSNR from each start; defenses; FedAvg
drift; batch-size prediction accuracy for B = 1..16 beside the analytic estimate.

    python benchmarks/learned_inversion.py [--out benchmarks/results] [--train-steps N] \
        [--range-steps N] [--iterations N] [--defense-images N] [--size-trials N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments.learned_inversion import LearnedInversionSettings
from gradleak.records import environment, write_json

TARGETS = (
    "batch size 1, LeNet/CIFAR-10: the inverter alone reaches SSIM >= 0.3 in < 50 ms per image; "
    "as IG's initialization it reduces the iterations IG needs to reach its final PSNR by >= 2x; "
    "batch-size prediction accuracy reported for sizes 1..16"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    defaults = LearnedInversionSettings()
    for field in ("train_steps", "batch_train_steps", "range_train_steps", "iterations",
                  "defense_images", "size_trials", "n_images", "seed"):  # fmt: skip
        parser.add_argument(
            f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field)
        )
    args = parser.parse_args()
    settings = dataclasses.replace(
        defaults,
        **{k: getattr(args, k) for k in vars(args) if k != "out"},
    )
    start = time.perf_counter()
    experiment = dataclasses.replace(get_preset("learned-inversion"), settings=settings)
    out = args.out / "runs" / "learned-inversion"
    results = run_experiment(experiment, out, RunOptions(threads=1))
    report = {
        "benchmark": "learned_inversion",
        "command": ("python benchmarks/learned_inversion.py " + " ".join(sys.argv[1:])).strip(),
        "target": TARGETS,
        "versions": environment(),
        "settings": results["settings"],
        "summary": results["summary"],
        "speedup": results["speedup"],
        "batch_size": results["batch_size_accuracy"],
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(args.out / "learned_inversion.json", report)
    (args.out / "learned_inversion.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    groups = report["summary"]["by_group"]
    lines = [
        "# learned-inversion",
        "",
        f"`{report['command']}` (attacks: {report['summary']['seconds'] / 60:.0f} min in all)",
        "",
        f"Target: {report['target']}.",
        "",
        "## PSNR / SSIM (medians) and seconds per reconstruction",
        "",
        "| group | cases | PSNR (dB) | SSIM | s / case |",
        "|---|---|---|---|---|",
    ]
    for name, s in groups.items():
        if s["psnr_median"] is None:
            continue
        lines.append(
            f"| {name} | {s['n_cases']} | {s['psnr_median']:.2f} | {s['ssim_median']:.3f} | "
            f"{s['seconds_median']:.4f} |"
        )
    lines += [
        "",
        "## Iterations Inverting Gradients needs to reach its own final PSNR (-0.1 dB)",
        "",
        "| batch | cases | median steps from noise | from the inverter | median ratio | "
        "inverter alone already above |",
        "|---|---|---|---|---|---|",
    ]
    for batch, entry in report["speedup"].items():
        ratio = "n/a" if entry["median_ratio"] is None else f"{entry['median_ratio']:.1f}x"
        lines.append(
            f"| {batch} | {entry['cases']} | {entry['median_noise_step']} | "
            f"{entry['median_learned_step']} | {ratio} | {entry['start_above']} |"
        )
    lines += [
        "",
        "## Batch size from the gradient (held-out auxiliary batches)",
        "",
        f"{report['settings']['size_trials']} trials per batch size.",
        "",
        "| B | learned head | analytic estimate |",
        "|---|---|---|",
    ]
    for batch, accuracy in report["batch_size"].items():
        lines.append(
            f"| {batch.removeprefix('B=')} | {accuracy['learned head']:.2f} | "
            f"{accuracy['analytic']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
