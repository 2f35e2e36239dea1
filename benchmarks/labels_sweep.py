"""Benchmark: batch label recovery and batch-size estimation on untrained networks.

A thin wrapper around the ``labels-sweep`` preset
(:mod:`gradleak.experiments.label_sweep`, where the method is described): it runs the sweep into
``OUT/runs/labels-sweep`` (resuming the trials already there), then writes the benchmark's
report.

    python benchmarks/labels_sweep.py [--out benchmarks/results] [--trials 10] [--seed 0]

Writes ``OUT/labels_sweep.json`` and ``OUT/labels_sweep.md``. Set GRADLEAK_SHARED_DATA to the data
folder if it is not found automatically.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from gradleak.experiments import RunOptions, get_preset, run_experiment
from gradleak.experiments.label_sweep import (
    LabelSweepSettings,
    batch_size_rows,
    label_rows,
    markdown,
)
from gradleak.records import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    settings = LabelSweepSettings(trials=args.trials, seed=args.seed)
    experiment = dataclasses.replace(get_preset("labels-sweep"), settings=settings)
    results = run_experiment(experiment, args.out / "runs" / "labels-sweep", RunOptions(threads=1))
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    settings = results["settings"]
    report = {
        "benchmark": "labels_sweep",
        "command": command,
        "versions": results["versions"],
        "settings": {
            key: settings[key]
            for key in ("trials", "seed", "label_batch_sizes", "batch_size_sweep", "target")
        },
        "labels": label_rows(results),
        "batch_size": batch_size_rows(results),
        "wall_seconds": time.perf_counter() - start,
        "cell_seconds": results["summary"]["seconds"],
    }
    write_json(args.out / "labels_sweep.json", report)
    (args.out / "labels_sweep.md").write_text(markdown(results, command=command))


if __name__ == "__main__":
    main()
