"""Benchmark: seconds per attack iteration on the CPU and on an accelerator (``--device``).

Cases, all on real images of the shared data folder:

* the seed presets (seed-mlp-flowers, seed-lenet-cifar, seed-lenet-bs2, seed-tv-sweep): the first
  case of each model x batch size x attack x gradient distance, with the preset's attack settings;
* Inverting Gradients (its defaults, one restart) on an untrained ResNet-18 at batch 1, 4 and 8
  (the first CIFAR-10 test images).

Every case runs ``--warmup`` + ``--iterations`` optimizer steps on the CPU and, when one exists,
on the accelerator; the warm-up steps (CUDA start-up, kernel selection) are not timed, and the
device is synchronized before every clock reading. Writes ``OUT/device_check.json`` and
``OUT/device_check.md`` (case, CPU s/it, accelerator s/it, speed-up), with the torch version, the
device's name, the CPU threads and the command line.

    python benchmarks/device_check.py [--device auto] [--threads N] [--iterations 5]

Set GRADLEAK_SHARED_DATA to the data folder if it is not found automatically.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from gradleak.attacks import get_attack
from gradleak.devices import device_name, resolve_device, synchronize
from gradleak.experiments import build, get_preset
from gradleak.experiments.spec import ImagesSpec
from gradleak.models import build_model
from gradleak.records import environment, write_json
from gradleak.threat import observe

SEED_PRESETS = ("seed-mlp-flowers", "seed-lenet-cifar", "seed-lenet-bs2", "seed-tv-sweep")
IG_BATCHES = (1, 4, 8)


def seed_cases(presets) -> list[dict]:
    """The first case of each (model, batch size, attack, distance) of every seed preset."""
    cases, seen = [], set()
    for name in presets:
        experiment = get_preset(name)
        for case in experiment.cases(experiment.settings):
            spec, record = case.method, case.record
            settings = dict(spec.settings)
            key = (record["model"], record["batch_size"], spec.attack, settings.get("distance"))
            if (name, *key) in seen:
                continue
            seen.add((name, *key))
            observation, _ = build.observation(case.observation, case.seed)
            cases.append(
                {
                    "case": f"{name}: {case.id}",
                    "model": record["model"],
                    "batch_size": record["batch_size"],
                    "attack": spec.attack,
                    "settings": settings,
                    "restarts": spec.restarts,
                    "observation": observation,
                }
            )
    return cases


def resnet_cases(batches) -> list[dict]:
    """Inverting Gradients on an untrained ResNet-18 (seed 0) at each batch size."""
    images = build.images(ImagesSpec("cifar10"))
    model = build_model("resnet18", num_classes=10, seed=0)
    cases = []
    for size in batches:
        index = list(range(size))
        cases.append(
            {
                "case": f"inverting_gradients: resnet18, CIFAR-10, batch {size}",
                "model": "resnet18",
                "batch_size": size,
                "attack": "inverting_gradients",
                "settings": {},
                "restarts": 1,
                "observation": observe(model, images.images[index], images.labels[index]),
            }
        )
    return cases


def measure(case: dict, device: torch.device, iterations: int, warmup: int) -> dict:
    """Seconds per iteration after ``warmup`` untimed ones; the device synchronized per tick."""
    stamps: list[float] = []

    def tick(done: int, total: int, value: float) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    attack = get_attack(case["attack"], **case["settings"])
    result = attack(
        case["observation"],
        iterations=warmup + iterations,
        restarts=case["restarts"],
        seed=0,
        callback=tick,
        device=device,
    )
    timed = len(stamps) - warmup
    return {
        "seconds_per_iteration": (stamps[-1] - stamps[warmup - 1]) / timed if timed > 0 else None,
        "timed_iterations": max(timed, 0),
        "first_gradient_distance": result.history[0] if result.history else None,
        "gradient_distance": result.gradient_distance,
        "restarts": result.settings.get("restarts"),
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def markdown(report: dict) -> str:
    accelerator = report["accelerator"]
    column = f"{accelerator['name']} s/it" if accelerator["device"] else "accelerator s/it"
    lines = [
        "# Seconds per attack iteration: CPU vs accelerator",
        "",
        f"`{report['command']}`",
        "",
        f"torch {report['versions']['torch']}; CPU: {report['cpu']}, "
        f"{report['threads']} torch thread(s) of {report['versions']['cpu_count']} cores; "
        f"accelerator: {accelerator['name']}. {report['iterations']} timed iterations per case "
        f"after {report['warmup']} warm-up iteration(s) (not timed). A DLG iteration is one "
        "L-BFGS step (up to 20 evaluations of the gradient distance), an Inverting Gradients "
        "iteration one Adam step.",
        "",
    ]
    if not accelerator["device"]:
        lines += [f"Not yet measured on a GPU ({accelerator['name']}).", ""]
    lines += [
        f"| case | model | batch | attack | CPU s/it | {column} | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["cases"]:
        cpu = row["cpu"]["seconds_per_iteration"]
        other = (row.get("accelerator") or {}).get("seconds_per_iteration")
        if accelerator["device"] is None:
            shown, speed = accelerator["name"], "n/a"
        else:
            shown = f"{other:.4f}" if other else "n/a"
            speed = f"{cpu / other:.1f}x" if cpu and other else "n/a"
        cpu_shown = f"{cpu:.4f}" if cpu else "n/a"
        lines.append(
            f"| {row['case']} | {row['model']} | {row['batch_size']} | {row['attack']} | "
            f"{cpu_shown} | {shown} | {speed} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:1, mps or cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (>= 1)")
    parser.add_argument("--presets", default=",".join(SEED_PRESETS))
    parser.add_argument("--batches", default=",".join(map(str, IG_BATCHES)))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.iterations < 1 or args.warmup < 1:
        parser.error("--iterations and --warmup must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    accelerator = device if device.type != "cpu" else None
    if accelerator is not None:
        name = device_name(accelerator)
    else:
        name = "not asked for (--device cpu)" if args.device == "cpu" else "no accelerator"

    cases = seed_cases([p for p in args.presets.split(",") if p])
    cases += resnet_cases([int(b) for b in args.batches.split(",") if b])
    rows = []
    for case in cases:
        row = {k: v for k, v in case.items() if k != "observation"}
        row["cpu"] = measure(case, torch.device("cpu"), args.iterations, args.warmup)
        if accelerator is not None:
            row["accelerator"] = measure(case, accelerator, args.iterations, args.warmup)
        rows.append(row)
        timings = ", ".join(
            f"{key} {row[key]['seconds_per_iteration']:.4f} s/it"
            for key in ("cpu", "accelerator")
            if row.get(key) and row[key]["seconds_per_iteration"]
        )
        print(f"{row['case']}: {timings}", flush=True)

    report = {
        "benchmark": "device_check",
        "command": "python benchmarks/device_check.py " + " ".join(sys.argv[1:]),
        "versions": environment(),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "accelerator": {"device": str(accelerator) if accelerator else None, "name": name},
        "iterations": args.iterations,
        "warmup": args.warmup,
        "cases": rows,
    }
    report["command"] = report["command"].strip()
    write_json(args.out / "device_check.json", report)
    text = markdown(report)
    (args.out / "device_check.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
