"""Benchmark: the ``prior-shift`` study (GIAS/GIFD priors in and out of distribution, DIP, IG).

Trains the three generative priors (cached and resumable under ``OUT/runs/prior-shift/artifacts``),
attacks every private batch and writes ``OUT/prior_shift.json`` and ``OUT/prior_shift.md``.

    python benchmarks/prior_shift.py [--out benchmarks/results] [--prior-steps N] \
        [--iterations N] [--n-images N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from gradleak.attacks import load_reconstruction
from gradleak.data import load_images
from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments.prior_shift import PriorShiftSettings
from gradleak.learning import read_card
from gradleak.records import environment, write_json
from gradleak.report import save_grid

TARGETS = (
    "in-distribution GIAS or GIFD beats Inverting Gradients' median PSNR at batch size 4 by >= 2 "
    "dB; under shift, the data-free prior is at least as good as the shifted generative prior"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model", default=PriorShiftSettings.model)
    defaults = PriorShiftSettings()
    for field in ("prior_steps", "iterations", "ig_iterations", "n_images", "restarts", "seed"):
        parser.add_argument(
            f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field)
        )
    args = parser.parse_args()
    settings = dataclasses.replace(
        defaults, **{k: getattr(args, k) for k in vars(args) if k != "out"}
    )
    start = time.perf_counter()
    name = "prior-shift" if args.model == defaults.model else f"prior-shift-{args.model}"
    experiment = dataclasses.replace(get_preset("prior-shift"), settings=settings)
    results = run_experiment(experiment, args.out / "runs" / name, RunOptions(threads=1))
    report = {
        "benchmark": "prior_shift",
        "command": ("python benchmarks/prior_shift.py " + " ".join(sys.argv[1:])).strip(),
        "target": TARGETS,
        "versions": environment(),
        "settings": results["settings"],
        "summary": results["summary"],
        "priors": {
            path.stem: {k: read_card(path).get(k) for k in PRIOR_FACTS}
            for path in sorted((args.out / "runs" / name / "artifacts").glob("*.safetensors"))
            if not path.name.endswith(".ckpt.safetensors")
        },
        "wall_seconds": time.perf_counter() - start,
    }
    stem = name.replace("-", "_")
    write_json(args.out / f"{stem}.json", report)
    (args.out / f"{stem}.md").write_text(markdown(report))
    figure = write_figure(
        results["cases"], settings.data, args.out / "runs" / name, args.out / f"{stem}.png"
    )
    print(markdown(report), f"figure: {figure} (rows: truth, then {', '.join(ROWS)})", sep="\n")


PRIOR_FACTS = ("data", "classes", "n_images", "steps", "train_seconds", "final_losses")
ROWS = ("ig", "dip", "gias (in-distribution)", "gifd (in-distribution)", "gias (other classes)",
        "gias (other dataset)")  # fmt: skip


def write_figure(cases: list[dict], data: str, run: Path, path: Path) -> Path:
    """The first batch of the largest size: truth, then one row per method in ``ROWS``."""
    largest = max(c["batch_size"] for c in cases)
    batch = next(c["images"] for c in cases if c["batch_size"] == largest)
    pool = load_images(data)
    index = {image_id: i for i, image_id in enumerate(pool.ids)}
    rows = [pool.images[[index[i] for i in batch]]]
    for variant in ROWS:
        case = next(c for c in cases if c["images"] == batch and c["variant"] == variant)
        reconstruction = load_reconstruction(run / case["files"]["reconstruction"])
        rows.append(reconstruction.images[case["order"]])
    return save_grid(path, rows, scale=3)


def markdown(report: dict) -> str:
    lines = [
        f"# prior-shift ({report['settings']['model']})",
        "",
        f"`{report['command']}` (attacks: {report['summary']['seconds'] / 60:.0f} min in all)",
        "",
        f"Target: {report['target']}.",
        "",
        "Priors (DCGAN, 32x32, trained on 1 thread, private images excluded):",
        "",
        *(
            f"- {name}: {p['n_images']} images of {p['data']} (classes {p['classes']}), "
            f"{p['steps']} steps in {p['train_seconds'] / 60:.1f} min"
            for name, p in report["priors"].items()
        ),
        "",
        "| method (prior) | batch | cases | PSNR median (dB) | SSIM median | s / case |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["summary"]["by_group"].items():
        method, _, batch = name.rpartition(", ")
        lines.append(
            f"| {method} | {batch} | {s['n_cases']} | {s['psnr_median']:.2f} | "
            f"{s['ssim_median']:.3f} | {s['seconds_median']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
