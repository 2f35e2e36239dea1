"""Benchmark: seconds per attack step under gradleak's thread policy and under torch's default.

Two workloads, as the case-pipeline issue measured them: LeNet DLG (L-BFGS, batch 1) and
ConvNet Inverting Gradients (signed Adam, batch 1), on a bundled photo. Each is timed idle and
with one competing CPU-bound process (a Python busy loop started first), under

- ``gradleak``: the default of :mod:`gradleak.threads` (1 thread for small models; for large ones
  the cores no other process is using, read when the run starts), and
- ``torch``: torch's own default (one thread per core).

Every measurement runs in a fresh process; the median of ``--repeats`` runs is reported. Writes
``OUT/threads.json`` and ``OUT/threads.md``. Run it on an otherwise idle machine:

    python benchmarks/threads.py [--out benchmarks/results] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gradleak.records import environment, write_json

WORKLOADS = {
    "lenet-dlg": {"model": "lenet", "attack": "dlg", "iterations": 5},
    "convnet-ig": {"model": "convnet", "attack": "inverting_gradients", "iterations": 20},
}
CHILD = r"""
import json, sys, torch
from gradleak import threads
from gradleak.attacks import get_attack
from gradleak.data import load_images
from gradleak.models import build_model
from gradleak.threat import observe

spec, policy = json.loads(sys.argv[1]), sys.argv[2]
model = build_model(spec["model"], seed=0)
if policy == "gradleak":
    threads.apply(threads.choose(None, macs=threads.model_macs(model)))
photo = load_images("bundled", size=32, n=1)
observation = observe(model, photo.images, photo.labels)
attack = get_attack(spec["attack"], patience=None)
attack(observation, iterations=1, seed=0)  # warm-up: imports, allocations
result = attack(observation, iterations=spec["iterations"], seed=0)
print(json.dumps({"threads": torch.get_num_threads(), "step": result.seconds / result.iterations}))
"""
BUSY = "while True: pass"


def measure(spec: dict, policy: str) -> dict:
    command = [sys.executable, "-c", CHILD, json.dumps(spec), policy]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for condition in ("idle", "one competing process"):
        competitor = None
        if condition != "idle":
            competitor = subprocess.Popen([sys.executable, "-c", BUSY])
            time.sleep(1.0)
        try:
            for name, spec in WORKLOADS.items():
                for policy in ("gradleak", "torch"):
                    runs = [measure(spec, policy) for _ in range(args.repeats)]
                    rows.append(
                        {
                            "workload": name,
                            "condition": condition,
                            "policy": policy,
                            "threads": runs[0]["threads"],
                            "seconds_per_step": statistics.median(r["step"] for r in runs),
                            "runs": [r["step"] for r in runs],
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    report = {
        "benchmark": "threads",
        "command": "python benchmarks/threads.py " + " ".join(sys.argv[1:]),
        "versions": environment(),
        "workloads": WORKLOADS,
        "rows": rows,
        "targets": targets(rows),
    }
    write_json(args.out / "threads.json", report)
    (args.out / "threads.md").write_text(markdown(report))
    print(markdown(report))


def _step(rows: list[dict], workload: str, condition: str, policy: str) -> float:
    return next(
        r["seconds_per_step"]
        for r in rows
        if (r["workload"], r["condition"], r["policy"]) == (workload, condition, policy)
    )


def targets(rows: list[dict]) -> dict:
    lenet_loaded = _step(rows, "lenet-dlg", "one competing process", "gradleak")
    lenet_idle = _step(rows, "lenet-dlg", "idle", "gradleak")
    convnet = _step(rows, "convnet-ig", "idle", "gradleak")
    convnet_torch = _step(rows, "convnet-ig", "idle", "torch")
    return {
        "lenet_loaded_over_idle": lenet_loaded / lenet_idle,
        "lenet_target_met": lenet_loaded / lenet_idle <= 1.5,
        "convnet_idle_over_torch_default": convnet / convnet_torch,
        "convnet_target_met": convnet <= convnet_torch * 1.05,
    }


def markdown(report: dict) -> str:
    versions, t = report["versions"], report["targets"]
    lines = [
        "# Threads: seconds per attack step",
        "",
        f"`{report['command']}`; torch {versions['torch']}, {versions['cpu_count']} CPUs, "
        f"{versions['platform']}; median of {len(report['rows'][0]['runs'])} fresh processes.",
        "",
        "| workload | condition | gradleak default (threads) | s / step | torch default "
        "(threads) | s / step | torch / gradleak |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in report["workloads"]:
        for condition in ("idle", "one competing process"):
            ours, theirs = (
                next(
                    r
                    for r in report["rows"]
                    if (r["workload"], r["condition"], r["policy"]) == (workload, condition, p)
                )
                for p in ("gradleak", "torch")
            )
            lines.append(
                f"| {workload} | {condition} | {ours['threads']} | "
                f"{ours['seconds_per_step']:.3f} | {theirs['threads']} | "
                f"{theirs['seconds_per_step']:.3f} | "
                f"{theirs['seconds_per_step'] / ours['seconds_per_step']:.2f}x |"
            )
    lines += [
        "",
        f"- LeNet with a competing process / idle, gradleak default: "
        f"{t['lenet_loaded_over_idle']:.2f}x (target <= 1.5x: "
        f"{'met' if t['lenet_target_met'] else 'not met'}).",
        f"- ConvNet idle, gradleak default / torch default: "
        f"{t['convnet_idle_over_torch_default']:.2f}x (target: not slower: "
        f"{'met' if t['convnet_target_met'] else 'not met'}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
