"""Benchmark (optional, not in CI): FedAvg updates and secure aggregates on real CIFAR-10 images.

Parts (``--parts``, default all; each writes into ``OUT/fedavg_cases.json`` and ``.md`` as soon
as it is done, and a rerun skips the parts already there with the same settings):

- ``exactness``: the attacker's functional replay (:class:`gradleak.gradient.ClientSimulator`)
  of the true images against the update the client computed with real ``torch.optim``
  optimizers, relative error, for SGD / momentum / Adam, K = 1..10 local steps, on LeNet and on
  ConvNet with train-mode BatchNorm; in float32 and float64 (float32 replays of train-mode
  BatchNorm differ by rounding amplified through the normalization; float64 shows that the two
  computations are the same).
- ``lenet``: LeNet (seed 0), 8 CIFAR-10 test images per case (images 0-7 and 8-15), one epoch of
  4 local SGD steps of batch 2, lr 0.1, labels hidden. gradleak's Inverting Gradients (labels
  ``auto``: joint for a multi-step update, then refined; TV 0.2 and 0.6), then breaching 0.1.2's
  multi-step ``invertinggradients`` (``breaching_updates_side.py`` in breaching's venv, its
  own label recovery on the update) on the same case with the wall time gradleak's best used.
- ``convnet``: the same on ConvNet (width 64, seed 0, train-mode BatchNorm) with 4 images, 1 and
  5 local steps of batch 4 (5 steps: 5 epochs), lr 0.01 (at lr 0.1 the untrained ConvNet
  diverges: loss 2.3, then 93 at the second step), small budgets (``--convnet-iterations`` at
  K = 1, a third of it at K = 5; stated in the table).
- ``secagg``: secure aggregate of 4 clients with one image each on ``mlp4``: ``fc_unmix`` reads
  the mean of the clients' gradients as one batch; PSNR of every image.
- ``hidden``: the LeNet cases when the server does not know lr, K, or both (lr learned with the
  images from a guess of 0.01; K assumed one epoch of the known local batch size; hiding K
  hides the data order, which lists every step).

Example (what produced ``benchmarks/results/fedavg_cases.md``)::

    python benchmarks/fedavg_cases.py --threads 2 \\
        --breaching-python /work/venv-breaching/bin/python --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gradleak.attacks import attack_class
from gradleak.data import load_images, shared_data_dir
from gradleak.gradient.simulation import ClientSimulator
from gradleak.metrics import score_batch
from gradleak.models import build_model
from gradleak.records import environment, write_json
from gradleak.threat import LocalTraining, observe

HERE = Path(__file__).resolve().parent
BREACHING_SIDE = HERE / "breaching_updates_side.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="exactness,secagg,lenet,hidden,convnet")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--breaching-python", default=None, help="breaching venv's python")
    parser.add_argument("--lenet-iterations", type=int, default=600)
    parser.add_argument("--convnet-iterations", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "fedavg_cases.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results["environment"] = environment()
    results["command"] = " ".join(["python", *sys.argv])
    data = load_images(shared_data_dir() / "cifar10" / "test_first20_lossless.npz", size=32)
    parts = {
        "exactness": lambda: exactness(data),
        "secagg": lambda: secagg(data),
        "lenet": lambda: lenet(data, args),
        "hidden": lambda: hidden(data, args),
        "convnet": lambda: convnet(data, args),
    }
    for name in args.parts.split(","):
        settings = {"threads": args.threads, "lenet": args.lenet_iterations,
                    "convnet": args.convnet_iterations}  # fmt: skip
        if results.get(name, {}).get("settings") == settings:
            print(f"{name}: done before, kept")
            continue
        print(f"{name}: running", flush=True)
        results[name] = {"settings": settings, "rows": parts[name]()}
        write_json(path, results)
        (args.out / "fedavg_cases.md").write_text(markdown(results))
    print(markdown(results))


# ---------------------------------------------------------------------- parts
def replay_error(observation, images, labels, dtype) -> float:
    view = observation.attacker_view()
    simulator = ClientSimulator(view.build_model().to(dtype), observation=view)
    with torch.no_grad():
        replayed = simulator.gradients(images[None].to(dtype), labels[None])
    diff = sum(
        (r[0] - observation.gradients[n]).pow(2).sum()
        for r, n in zip(replayed, simulator.names, strict=True)
    )
    return float((diff / sum(g.pow(2).sum() for g in observation.gradients.values())).sqrt())


def exactness(data) -> list[dict]:
    rows = []
    images, labels = data.images[:4], data.labels[:4]
    for name in ("lenet", "convnet"):
        for optimizer in ("sgd", "momentum", "adam"):
            lr = 0.01 if optimizer == "adam" else 0.1
            for dtype in (torch.float32, torch.float64):
                errors = []
                for steps in range(1, 11):
                    model = build_model(name, num_classes=10, seed=0).to(dtype)
                    training = LocalTraining(
                        lr=lr, batch_size=2, steps=steps, optimizer=optimizer, shuffle=True
                    )
                    observation = observe(model, images.to(dtype), labels, local=training)
                    errors.append(replay_error(observation, images, labels, dtype))
                rows.append(
                    {"model": name, "optimizer": optimizer, "lr": lr, "dtype": str(dtype)[6:],
                     "max_error": max(errors), "errors": errors}
                )  # fmt: skip
                print(rows[-1]["model"], optimizer, rows[-1]["dtype"], f"{max(errors):.2e}")
    return rows


def secagg(data) -> list[dict]:
    images, labels = data.images[:4], data.labels[:4]
    model = build_model("mlp4", num_classes=10, seed=0)
    observation = observe(model, images, labels, clients=4)
    result = attack_class("fc_unmix")()(observation)
    score = score_batch(result.images, images, result.labels, labels)
    return [
        {"model": "mlp4", "clients": 4, "images_per_client": 1, "attack": "fc_unmix",
         "psnr": score.psnr.tolist(), "min_psnr": float(score.psnr.min()),
         "label_accuracy": score.label_accuracy, "seconds": result.seconds,
         "treatment": result.notes.get("clients")}
    ]  # fmt: skip


#: gradleak's configurations on updates: name -> (attack, settings).
LENET_CONFIGS = {
    "ig": ("inverting_gradients", {}),
    "ig-tv0.6": ("inverting_gradients", {"tv": 0.6}),
}


def lenet_case(data, first: int, hide: dict | None = None, steps=None) -> tuple:
    images, labels = data.images[first : first + 8], data.labels[first : first + 8]
    model = build_model("lenet", num_classes=10, seed=0)
    training = LocalTraining(lr=0.1, batch_size=2, epochs=None if steps else 1, steps=steps)
    observation = observe(
        model, images, labels, local=training, knows_labels=False, knows_local=hide
    )
    return model, observation, images, labels


def run_gradleak(observation, images, labels, config: str, iterations: int) -> dict:
    name, settings = LENET_CONFIGS.get(config, (config, {}))
    result = attack_class(name)(**settings)(observation, iterations=iterations)
    score = score_batch(result.images, images, result.labels, labels)
    return {
        "tool": "gradleak", "config": config, "iterations": result.iterations,
        "seconds": result.seconds, "s_per_iteration": result.seconds / max(1, result.iterations),
        "psnr_median": float(score.psnr.median()), "psnr_mean": float(score.psnr.mean()),
        "ssim_median": float(score.ssim.median()), "label_accuracy": score.label_accuracy,
        "notes": result.notes,
    }  # fmt: skip


def run_breaching(args, folder: Path, model, observation, images, labels, wall: float) -> dict:
    """breaching's multi-step attack on the same case, with about ``wall`` seconds."""
    if not args.breaching_python:
        return {"tool": "breaching", "skipped": "no --breaching-python"}
    folder.mkdir(parents=True, exist_ok=True)
    order = observation.local["order"]
    tensors = {f"weight/{k}": v.contiguous() for k, v in observation.weights.items()}
    tensors.update({f"update/{k}": v.contiguous() for k, v in observation.gradients.items()})
    tensors.update({"labels": labels.contiguous(), "truth_images": images.contiguous()})
    save_file(tensors, str(folder / "case.safetensors"))
    case = {
        "model": model.config["name"], "num_classes": 10, "image_shape": list(images.shape[1:]),
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        "local_steps": len(order), "local_batch_size": len(order[0]),
        "lr": observation.local["lr"], "data_order": order, "labels_known": False,
        "seed": 0, "threads": args.threads, "bn_mode": observation.bn_mode,
    }  # fmt: skip
    if model.config.get("width"):
        case["width"] = model.config["width"]

    def attack(iterations: int) -> dict:
        case["iterations"] = iterations
        case["snapshot_every"] = max(1, iterations)
        (folder / "case.json").write_text(json.dumps(case))
        command = [args.breaching_python, str(BREACHING_SIDE), str(folder), "--allow-unstable"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            tail = done.stdout[-2000:] + done.stderr[-2000:]
            raise RuntimeError(f"breaching side failed:\n{tail}")
        return json.loads((folder / "breaching_result.json").read_text())

    probe = attack(5)
    iterations = max(5, math.floor(wall / probe["seconds_per_iteration"]))
    record = attack(iterations)
    result = load_file(str(folder / "breaching_result.safetensors"))
    score = score_batch(result["images"], images)
    return {
        "tool": "breaching", "config": "invertinggradients (multi-step)",
        "iterations": iterations, "seconds": record["seconds"],
        "s_per_iteration": record["seconds_per_iteration"],
        "psnr_median": float(score.psnr.median()), "psnr_mean": float(score.psnr.mean()),
        "ssim_median": float(score.ssim.median()),
        "label_accuracy": _breaching_label_accuracy(record, labels),
    }  # fmt: skip


def _breaching_label_accuracy(record: dict, labels: torch.Tensor) -> float | None:
    recovered = (record.get("labels") or {}).get("recovered")
    if recovered is None:
        return None
    from gradleak.metrics import label_accuracy

    return label_accuracy(torch.tensor(recovered), labels)


def lenet(data, args) -> list[dict]:
    rows = []
    for first in (0, 8):
        model, observation, images, labels = lenet_case(data, first)
        best = None
        for config in LENET_CONFIGS:
            row = run_gradleak(observation, images, labels, config, args.lenet_iterations)
            row = {"case": f"images {first}-{first + 7}", **row}
            rows.append(row)
            print(row["case"], config, f"{row['psnr_median']:.2f} dB {row['seconds']:.0f} s")
            best = row if best is None or row["psnr_median"] > best["psnr_median"] else best
        folder = args.out / "runs" / "fedavg_cases" / f"lenet-{first}"
        row = run_breaching(args, folder, model, observation, images, labels, best["seconds"])
        row = {"case": f"images {first}-{first + 7}", **row}
        rows.append(row)
        print(row["case"], "breaching", row.get("psnr_median"), row.get("seconds"))
    return rows


def hidden(data, args) -> list[dict]:
    rows = []
    variants = {
        "all known": ({}, None),
        "lr hidden": ({"lr": False}, None),
        "K hidden (true K = 4)": ({"steps": False}, None),
        "all known, K = 8 (2 epochs)": ({}, 8),
        "K hidden (true K = 8: 2 epochs)": ({"steps": False}, 8),
        "lr and K hidden (true K = 8)": ({"lr": False, "steps": False}, 8),
    }
    for first in (0, 8):
        for variant, (hide, steps) in variants.items():
            _, observation, images, labels = lenet_case(data, first, hide=hide, steps=steps)
            row = run_gradleak(observation, images, labels, "ig", args.lenet_iterations)
            rows.append({"case": f"images {first}-{first + 7}", "variant": variant, **row})
            print(variant, f"{row['psnr_median']:.2f} dB", row["notes"].get("estimated_lr"))
    return rows


def convnet(data, args) -> list[dict]:
    rows = []
    images, labels = data.images[:4], data.labels[:4]
    for steps in (1, 5):
        model = build_model("convnet", num_classes=10, seed=0)
        training = LocalTraining(lr=0.01, batch_size=4, steps=steps)
        observation = observe(model, images, labels, local=training, knows_labels=False)
        best = None
        configs = ["ig"] + (["fedavg_leakage"] if steps > 1 else [])
        iterations = args.convnet_iterations if steps == 1 else max(1, args.convnet_iterations // 3)
        for config in configs:
            start = time.perf_counter()
            row = run_gradleak(observation, images, labels, config, iterations)
            row = {"case": f"K = {steps} x batch 4", **row}
            rows.append(row)
            print(row["case"], config, f"{row['psnr_median']:.2f} dB",
                  f"{time.perf_counter() - start:.0f} s")  # fmt: skip
            best = row if best is None or row["psnr_median"] > best["psnr_median"] else best
        folder = args.out / "runs" / "fedavg_cases" / f"convnet-{steps}"
        row = run_breaching(args, folder, model, observation, images, labels, best["seconds"])
        rows.append({"case": f"K = {steps} x batch 4", **row})
        print("breaching", rows[-1].get("psnr_median"))
    return rows


# ---------------------------------------------------------------------- report
def markdown(results: dict) -> str:
    env = results.get("environment", {})
    lines = [
        "# FedAvg updates and secure aggregates (real CIFAR-10 test images)",
        "",
        f"`{results.get('command', '')}`",
        "",
        f"torch {env.get('torch')}, {platform.platform()}; seconds are wall time on this "
        "machine with the thread count below, one tool at a time.",
        "",
    ]
    if "exactness" in results:
        lines += ["## Exactness: replay of the true images vs the client's real training", "",
                  "| model | optimizer | lr | dtype | max relative error over K = 1..10 |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in results["exactness"]["rows"]:
            lines.append(
                f"| {r['model']} | {r['optimizer']} | {r['lr']} | {r['dtype']} | "
                f"{r['max_error']:.1e} |"
            )
        lines.append("")
    for part, title in (
        ("lenet", "LeNet, 8 images, 1 epoch of 4 steps of batch 2, lr 0.1, labels hidden"),
        ("convnet", "ConvNet (width 64), 4 images, K steps of batch 4, lr 0.01, labels hidden"),
        ("hidden", "LeNet, hidden local hyperparameters (Inverting Gradients)"),
    ):
        if part not in results:
            continue
        lines += [f"## {title}", "", f"threads: {results[part]['settings']['threads']}", "",
                  "| case | variant | tool | config | iterations | s / it | seconds | PSNR median "
                  "| PSNR mean | SSIM median | label acc. |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results[part]["rows"]:
            if r.get("skipped"):
                lines.append(f"| {r['case']} | | {r['tool']} | skipped: {r['skipped']} |||||||")
                continue
            lines.append(
                f"| {r['case']} | {r.get('variant', '')} | {r['tool']} | {r['config']} | "
                f"{r['iterations']} | {r['s_per_iteration']:.3f} | {r['seconds']:.0f} | "
                f"{r['psnr_median']:.2f} | {r['psnr_mean']:.2f} | {r['ssim_median']:.3f} | "
                f"{_fmt(r.get('label_accuracy'))} |"
            )
        lines.append("")
    if "secagg" in results:
        r = results["secagg"]["rows"][0]
        psnr = ", ".join(f"{p:.1f}" for p in r["psnr"])
        lines += ["## Secure aggregation: 4 clients of one image each, mlp4", "",
                  f"`fc_unmix` ({r['treatment']}): PSNR per image {psnr} dB "
                  f"(min {r['min_psnr']:.1f}), label accuracy {r['label_accuracy']:.2f}, "
                  f"{r['seconds']:.1f} s.", ""]  # fmt: skip
    return "\n".join(lines)


def _fmt(value) -> str:
    return "" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
