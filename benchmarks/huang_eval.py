"""Benchmark: the ``huang`` preset (Huang et al., NeurIPS 2021) on a trained ResNet-20, CIFAR-10.

GradInversion and Inverting Gradients under the attacker's assumptions (BatchNorm statistics
exact / proxy / inferred from the running statistics, labels known / recovered, batch size known
/ estimated: the strongest, each relaxed alone, all relaxed) and GradInversion with the strongest
assumptions against defenses. Runs the preset (resumable under ``OUT/runs/huang``) with the
budget given by the flags and writes ``OUT/huang_eval.json`` and ``OUT/huang_eval.md``: per
assumption row and batch size, PSNR / SSIM after optimal matching and label accuracy, with the
cases skipped or failed (a wrong batch-size estimate makes a reconstruction of the wrong size,
which cannot be scored) and the batch sizes the attacker estimated.

    python benchmarks/huang_eval.py [--out benchmarks/results] [--iterations N] [--n-images N]
        [--max-batches N] [--batch-sizes 1,4] [--restarts N] [--defenses "prune:keep=0.1,..."]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments.huang import HuangSettings
from gradleak.records import environment, write_json


def main() -> None:
    defaults = HuangSettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--iterations", type=int, default=defaults.iterations)
    parser.add_argument("--restarts", type=int, default=defaults.restarts)
    parser.add_argument("--n-images", type=int, default=defaults.n_images)
    parser.add_argument("--max-batches", type=int, default=defaults.max_batches)
    parser.add_argument("--batch-sizes", default=",".join(map(str, defaults.batch_sizes)))
    parser.add_argument("--defenses", default=",".join(defaults.defenses))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dataclasses.replace(
        defaults,
        iterations=args.iterations,
        restarts=args.restarts,
        n_images=args.n_images,
        max_batches=args.max_batches,
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        defenses=tuple(d for d in args.defenses.split(",") if d),
    )
    experiment = dataclasses.replace(get_preset("huang"), settings=settings)
    start = time.perf_counter()
    results = run_experiment(
        experiment, args.out / "runs" / "huang", RunOptions(threads=args.threads)
    )
    report = {
        "benchmark": "huang_eval",
        "command": ("python benchmarks/huang_eval.py " + " ".join(sys.argv[1:])).strip(),
        "threads": args.threads,
        "versions": environment(),
        "settings": results["settings"],
        "rows": summarize(results["cases"]),
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(args.out / "huang_eval.json", report)
    (args.out / "huang_eval.md").write_text(markdown(report))
    print(markdown(report))


def summarize(cases: list[dict]) -> list[dict]:
    """One entry per (row, defense, batch size), in the order the preset runs them."""
    groups: dict[tuple, list[dict]] = {}
    for case in cases:
        key = (case.get("row", case["variant"]), case.get("defense", "none"), case["batch_size"])
        groups.setdefault(key, []).append(case)
    rows = []
    for (row, defense, size), members in groups.items():
        done = [c for c in members if c.get("status") == "done"]
        estimates = [
            c["notes"]["batch_size"].rsplit(": ", 1)[-1]
            for c in members
            if isinstance(c.get("notes"), dict) and "batch_size" in c["notes"]
        ]
        failed = [c.get("error", "") for c in members if c.get("status") == "failed"]
        rows.append(
            {
                "row": row,
                "defense": defense,
                "batch_size": size,
                "cases": len(members),
                "done": len(done),
                "skipped": sum(c.get("status") == "skipped" for c in members),
                "failed": len(failed),
                "errors": sorted(set(failed)),
                "psnr": _values(done, "psnr"),
                "psnr_mean": _mean(done, "psnr"),
                "ssim_mean": _mean(done, "ssim"),
                "label_accuracy": _mean(done, "label_accuracy"),
                "estimated_batch_sizes": [int(e) for e in estimates],
                "seconds_mean": _mean(done, "seconds"),
            }
        )
    return rows


def _values(cases: list[dict], key: str) -> list[float]:
    return [round(float(c[key]), 2) for c in cases if isinstance(c.get(key), int | float)]


def _mean(cases: list[dict], key: str) -> float | None:
    values = [float(c[key]) for c in cases if isinstance(c.get(key), int | float)]
    return statistics.fmean(values) if values else None


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    s = report["settings"]
    versions = report["versions"]
    lines = [
        "# Huang et al. (NeurIPS 2021): attack strength vs assumptions and defenses",
        "",
        f"`{report['command']}`; {report['threads']} thread(s), "
        f"{report['wall_seconds'] / 60:.1f} min wall in all; torch {versions.get('torch')}, "
        f"python {versions.get('python')}.",
        "",
        f"Model {s['model']} ({s['weights']}), {s['data']} 32x32: the first {s['n_images']} test "
        f"images with distinct labels, batch sizes {s['batch_sizes']}"
        + (f" (at most {s['max_batches']} batch(es) each)" if s.get("max_batches") else "")
        + f"; {s['iterations']} iterations, {s['restarts']} restart(s), seeds {s['seeds']}. "
        "BN inferred = the model's running statistics; BN proxy = a same-size batch of "
        f"`{s['bn_proxy']}` images; labels recovered = from the gradient (label strategy "
        "`auto`); B estimated = `estimate_batch_size` from the gradient. PSNR/SSIM after optimal "
        "matching, means over the cases of a cell (PSNR of every case listed).",
        "",
        "| assumptions | defense | B | PSNR mean (dB) | PSNR per case | SSIM mean | label acc. "
        "| B estimates | done / skipped / failed | s / case |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['row']} | {r['defense']} | {r['batch_size']} | {_fmt(r['psnr_mean'], 2)} | "
            f"{', '.join(f'{v:.1f}' for v in r['psnr']) or '-'} | {_fmt(r['ssim_mean'], 3)} | "
            f"{_fmt(r['label_accuracy'], 2)} | "
            f"{', '.join(map(str, r['estimated_batch_sizes'])) or '-'} | "
            f"{r['done']} / {r['skipped']} / {r['failed']} | {_fmt(r['seconds_mean'], 0)} |"
        )
    errors = sorted({e for r in report["rows"] for e in r["errors"]})
    if errors:
        lines += ["", "Failed cases:", "", *(f"- {e}" for e in errors)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
