"""Benchmark: seconds per Inverting Gradients step on the CPU and on a CUDA device.

ConvNet and ResNet-18 (seeded, untrained), a batch of 4 bundled photos, 1 and 4 restarts; the
CPU with all its cores, the GPU through ``device="cuda"``. One warm-up run each, then
``--iterations`` timed steps. Writes ``OUT/device.json`` and ``OUT/device.md``.

    python benchmarks/device.py [--out benchmarks/results] [--iterations 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gradleak.attacks import get_attack
from gradleak.data import load_images
from gradleak.models import build_model
from gradleak.records import environment, write_json
from gradleak.threat import observe

CASES = [("convnet", 1), ("convnet", 4), ("resnet18", 1), ("resnet18", 4)]


def step_seconds(observation, device: str, restarts: int, iterations: int) -> tuple[float, float]:
    attack = get_attack("inverting_gradients")
    attack(observation, iterations=2, restarts=restarts, device=device)  # warm-up
    result = attack(observation, iterations=iterations, restarts=restarts, device=device)
    return result.seconds / result.iterations, result.gradient_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    photos = load_images("bundled", size=32, n=4)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name, restarts in CASES:
        observation = observe(build_model(name, seed=0), photos.images, photos.labels)
        row = {"model": name, "batch_size": 4, "restarts": restarts}
        for device in devices:
            seconds, distance = step_seconds(observation, device, restarts, args.iterations)
            row[device] = {"seconds_per_step": seconds, "gradient_distance": distance}
        rows.append(row)
        print(row, flush=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    report = {
        "benchmark": "device",
        "command": "python benchmarks/device.py " + " ".join(sys.argv[1:]),
        "versions": environment(),
        "gpu": gpu,
        "rows": rows,
    }
    write_json(args.out / "device.json", report)
    lines = [
        "# Inverting Gradients step: CPU vs CUDA",
        "",
        f"`{report['command']}`; torch {report['versions']['torch']}, "
        f"{report['versions']['cpu_count']} CPU cores ({torch.get_num_threads()} threads), "
        f"GPU: {gpu}; batch of 4 bundled photos, {args.iterations} timed steps.",
        "",
        "| model | restarts | CPU s / step | GPU s / step | speed-up |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cpu = row["cpu"]["seconds_per_step"]
        gpu_step = row.get("cuda", {}).get("seconds_per_step")
        speed = f"{cpu / gpu_step:.1f}x" if gpu_step else "n/a"
        shown = f"{gpu_step:.4f}" if gpu_step else "n/a"
        lines.append(f"| {row['model']} | {row['restarts']} | {cpu:.4f} | {shown} | {speed} |")
    (args.out / "device.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
