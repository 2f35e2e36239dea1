"""Benchmark: auditing a real Flower federation (``gradleak.flower``), three measurements.

1. ``demo``: ``python -m gradleak.flower.demo``'s default (the example Flower app, 2 clients x 2
   rounds, LeNet, one local SGD step of batch 1, in Flower's simulation engine; every captured
   update attacked with iDLG): wall time of the whole run and PSNR per client per round, on the
   bundled photos and on CIFAR-10.
2. ``multistep``: 4 local steps of batch 2 per client (8 images per update, labels hidden):
   Inverting Gradients on the update captured from Flower vs on the update gradleak simulates
   (``observe(local=...)``) from the same weights and images, same attack and seed; the updates'
   largest difference and the PSNR of each.
3. ``overhead``: the federation's round time with and without the AuditStrategy (and with an
   out-of-band iDLG attack of 100 iterations on every update), median over rounds 2..R.

    python benchmarks/flower_audit.py [--out benchmarks/results] [--parts demo,multistep,overhead]
        [--iterations 600] [--rounds 10]

Writes ``OUT/flower_audit.json`` and ``OUT/flower_audit.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from gradleak.attacks import get_attack
from gradleak.flower.demo import FlowerDemo, backend_config, prepare_app, run_demo
from gradleak.metrics import score_batch
from gradleak.records import environment, write_json
from gradleak.threat import LocalTraining, load_observation, observe


def demo_part(images: str, threads: int) -> dict:
    from gradleak.experiments.spec import RunOptions

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = run_demo(
            FlowerDemo(images=images), Path(tmp) / "demo", options=RunOptions(threads=threads)
        )
        seconds = time.perf_counter() - start
    psnrs = [c["psnr"] for c in results["cases"]]
    return {
        "images": images,
        "seconds": seconds,
        "psnr": psnrs,
        "psnr_median": statistics.median(psnrs),
        "label_accuracy": statistics.fmean(c["label_accuracy"] for c in results["cases"]),
    }


def multistep_part(images: str, iterations: int) -> dict:
    demo = FlowerDemo(
        images=images, rounds=1, local_steps=4, batch_size=2, methods=("inverting_gradients",),
        iterations=iterations,
    )  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        results = run_demo(demo, out)
        for case in results["cases"]:
            captured = load_observation(out / "captures" / case["file"])
            simulated = observe(
                captured.build_model(),
                captured.truth.images,
                captured.truth.labels,
                local=LocalTraining(lr=demo.lr, batch_size=demo.batch_size, steps=demo.local_steps),
                knows_labels=False,
            )
            difference = max(
                float((captured.gradients[k] - v).abs().max() / v.abs().max())
                for k, v in simulated.gradients.items()
            )
            attack = get_attack("inverting_gradients")
            scores = {}
            for name, observation in (("captured", captured), ("simulated", simulated)):
                reconstruction = attack(observation, iterations=iterations, seed=demo.seed)
                truth = captured.truth
                scores[name] = score_batch(
                    reconstruction.images, truth.images, reconstruction.labels, truth.labels
                ).summary()
            rows.append(
                {
                    "case": case["id"],
                    "pipeline_psnr": case["psnr"],
                    "captured_psnr": scores["captured"]["psnr"],
                    "simulated_psnr": scores["simulated"]["psnr"],
                    "captured_label_accuracy": scores["captured"]["label_accuracy"],
                    "simulated_label_accuracy": scores["simulated"]["label_accuracy"],
                    "max_relative_update_difference": difference,
                }
            )
    return {"images": images, "iterations": iterations, "rows": rows}


def overhead_part(rounds: int) -> dict:
    """Round times of the example federation with FedAvg alone, with the AuditStrategy, and with
    the AuditStrategy running iDLG on every update in its background thread."""
    prepare_app()
    from flower_app import client_app, task
    from flwr.app import ArrayRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from gradleak.flower import AuditStrategy

    rows = []
    for setup in ("FedAvg", "AuditStrategy(FedAvg)", "AuditStrategy(FedAvg) + iDLG out of band"):
        with tempfile.TemporaryDirectory() as tmp:
            overrides = {"num-server-rounds": rounds, "images": "bundled"}
            marks: list[float] = []
            app = ServerApp()

            @app.main()
            def main(grid, context, setup=setup, tmp=tmp, overrides=overrides, marks=marks):
                config = task.app_config(context.run_config, overrides)
                model = task.load_model(config)
                strategy = FedAvg(min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0)
                if setup != "FedAvg":
                    strategy = AuditStrategy(
                        strategy, model=model, out=Path(tmp) / "captures",
                        local={"lr": 0.01, "batch_size": 1, "steps": 1},
                        attacks=("idlg",) if "iDLG" in setup else (),
                        attack_settings={"idlg": {"iterations": 100}},
                    )  # fmt: skip
                strategy.start(
                    grid=grid,
                    initial_arrays=ArrayRecord(model.net.state_dict()),
                    num_rounds=rounds,
                    evaluate_fn=lambda server_round, arrays: marks.append(time.perf_counter()),
                )
                marks.append(time.perf_counter())  # after the audit's last attacks finished

            run_simulation(
                server_app=app,
                client_app=client_app.make_app(overrides),
                num_supernodes=2,
                backend_config=backend_config(2),
            )
        per_round = [b - a for a, b in zip(marks[:-2], marks[1:-1], strict=True)]
        rows.append(
            {
                "setup": setup,
                "round_seconds": per_round,
                "median_round_seconds": statistics.median(per_round[1:]),
                "wait_after_last_round": marks[-1] - marks[-2],
            }
        )
    base = rows[0]["median_round_seconds"]
    for row in rows:
        row["ratio"] = row["median_round_seconds"] / base
    return {"rounds": rounds, "clients": 2, "model": "lenet", "rows": rows}


def markdown(report: dict) -> str:
    lines = [
        "# Auditing a real Flower federation (`gradleak.flower`)",
        "",
        f"`{report['command']}`",
        "",
        f"flwr {report['versions'].get('flwr')}, torch {report['versions']['torch']}, "
        f"{report['versions']['platform']}, {report['versions']['cpu_count']} cores; "
        f"attacks with {report['threads']} thread(s), Flower clients one CPU each.",
    ]
    if "demo" in report:
        lines += [
            "",
            "## `python -m gradleak.flower.demo` (2 clients x 2 rounds, LeNet, 1 step of batch 1)",
            "",
            "| images | wall time (federation + attacks) | PSNR per update (dB) | median "
            "| labels |",
            "|---|---|---|---|---|",
        ]
        for row in report["demo"]:
            lines.append(
                f"| {row['images']} | {row['seconds']:.0f} s | "
                f"{', '.join(f'{p:.1f}' for p in row['psnr'])} | {row['psnr_median']:.1f} | "
                f"{100 * row['label_accuracy']:.0f} % |"
            )
    if "multistep" in report:
        part = report["multistep"]
        lines += [
            "",
            f"## 4 local steps of batch 2 ({part['images']}, labels hidden, Inverting Gradients, "
            f"{part['iterations']} iterations)",
            "",
            "| update | max relative difference captured vs simulated | PSNR captured (dB) | "
            "PSNR simulated (dB) | difference (dB) | labels captured / simulated |",
            "|---|---|---|---|---|---|",
        ]
        for row in part["rows"]:
            lines.append(
                f"| {row['case']} | {row['max_relative_update_difference']:.1e} | "
                f"{row['captured_psnr']:.2f} | {row['simulated_psnr']:.2f} | "
                f"{row['captured_psnr'] - row['simulated_psnr']:+.2f} | "
                f"{100 * row['captured_label_accuracy']:.0f} % / "
                f"{100 * row['simulated_label_accuracy']:.0f} % |"
            )
    if "overhead" in report:
        part = report["overhead"]
        lines += [
            "",
            f"## Overhead on the federation ({part['clients']} clients, {part['model']}, "
            f"{part['rounds']} rounds; median round time over rounds 2..{part['rounds']})",
            "",
            "| server strategy | median round (s) | ratio | wait after the last round (s) |",
            "|---|---|---|---|",
        ]
        for row in part["rows"]:
            lines.append(
                f"| {row['setup']} | {row['median_round_seconds']:.3f} | {row['ratio']:.2f} | "
                f"{row['wait_after_last_round']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--parts", default="demo,multistep,overhead")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    from importlib.metadata import version

    report: dict = {
        "benchmark": "flower_audit",
        "command": "python " + " ".join(sys.argv),
        "threads": args.threads,
        "versions": {**environment(), "flwr": version("flwr")},
    }
    if "demo" in parts:
        report["demo"] = [demo_part(images, args.threads) for images in ("bundled", "cifar10")]
    if "multistep" in parts:
        report["multistep"] = multistep_part("cifar10", args.iterations)
    if "overhead" in parts:
        report["overhead"] = overhead_part(args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "flower_audit.json", report)
    (args.out / "flower_audit.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
