"""Benchmark: the reference write-up's four experiments on real images.

Runs the presets seed-mlp-flowers (Flowers-17, one image per class), seed-lenet-cifar,
seed-lenet-bs2 and seed-tv-sweep (the 20 lossless CIFAR-10 test images from the shared data
folder), then writes ``benchmarks/results/seed_cases.json`` and ``seed_cases.md``.

    python benchmarks/seed_cases.py [--out benchmarks/results] [--presets a,b] [--iterations N]

Other presets are benchmarked the same way under another name, e.g. the prior ablation:

    python benchmarks/seed_cases.py --presets priors-ablation --iterations 400 --restarts 2 \
        --name priors_ablation

Each preset's run folder (``OUT/runs/PRESET``) holds its own results.json and figures; an
interrupted benchmark resumes where it stopped. Set GRADLEAK_SHARED_DATA to the data folder if it
is not found automatically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.records import environment, write_json

PRESETS = ("seed-mlp-flowers", "seed-lenet-cifar", "seed-lenet-bs2", "seed-tv-sweep")
TARGETS = {
    "seed-mlp-flowers": "median PSNR >= 40 dB",
    "seed-lenet-cifar": "median PSNR >= 30 dB with the better of l2/cosine, each case <= 120 s",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--restarts", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="seed_cases", help="stem of the JSON/Markdown files")
    parser.add_argument("--workers", type=int, default=1, help="cases run in parallel")
    args = parser.parse_args()

    command = "python benchmarks/seed_cases.py " + " ".join(sys.argv[1:])
    rows, report = (
        [],
        {
            "benchmark": args.name,
            "command": command.strip(),
            "versions": environment(),
            "presets": {},
        },
    )
    for name in args.presets.split(","):
        preset = get_preset(name)
        start = time.perf_counter()
        options = RunOptions(
            iterations=args.iterations,
            restarts=args.restarts,
            seed=args.seed,
            threads=1,
            workers=args.workers,
        )
        results = run_experiment(preset, args.out / "runs" / name, options)
        report["presets"][name] = {
            "settings": results["settings"],
            "summary": results["summary"],
            "target": TARGETS.get(name),
            "wall_seconds": time.perf_counter() - start,
        }
        for variant in results["summary"]["by_variant"]:
            cases = [c for c in results["cases"] if c["variant"] == variant and c["psnr"]]
            for size, composition in dict.fromkeys(
                (len(c["images"]), c["composition"]) for c in cases
            ):
                part = [
                    c for c in cases if (len(c["images"]), c["composition"]) == (size, composition)
                ]
                rows.append(_row(name, variant, f"{composition}, B={size}", part))
        write_json(args.out / f"{args.name}.json", report)
        (args.out / f"{args.name}.md").write_text(_markdown(rows, report))
        print(json.dumps({name: report["presets"][name]["summary"]}, indent=1))


def _row(preset: str, variant: str, composition: str, cases: list[dict]) -> dict:
    import statistics

    psnr = [c["psnr"] for c in cases]
    ssim = [c["ssim"] for c in cases]
    secs = [c["seconds"] for c in cases]
    its = sum(c["iterations"] for c in cases)
    return {
        "preset": preset,
        "variant": variant,
        "batches": composition,
        "cases": len(cases),
        "psnr_median": statistics.median(psnr),
        "psnr_min": min(psnr),
        "ssim_median": statistics.median(ssim),
        "label_accuracy": statistics.fmean(c.get("label_accuracy", 0.0) for c in cases),
        "seconds_median": statistics.median(secs),
        "seconds_max": max(secs),
        "iterations_per_second": its / sum(secs),
    }


def _markdown(rows: list[dict], report: dict) -> str:
    versions = report["versions"]
    lines = [
        f"# {report['benchmark']}: presets on real images",
        "",
        f"`{report['command']}`",
        "",
        f"torch {versions['torch']}, 1 thread per case, "
        f"{versions['cpu_count']} CPUs, {versions['platform']}",
        "",
        "| preset | variant | batches | cases | PSNR median | PSNR min | SSIM median "
        "| label acc. | s/case median | s/case max | it/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['variant']} | {r['batches']} | {r['cases']} "
            f"| {r['psnr_median']:.2f} | {r['psnr_min']:.2f} | {r['ssim_median']:.3f} "
            f"| {r['label_accuracy']:.2f} | {r['seconds_median']:.1f} | {r['seconds_max']:.1f} "
            f"| {r['iterations_per_second']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
