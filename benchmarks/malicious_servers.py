"""Benchmark: malicious servers (``gradleak.malicious``) on real CIFAR-10 test images.

1. ``imprint``: 128 bins, one client, batch 64: the fraction of images recovered exactly
   (PSNR >= 60 dB after optimal matching), gradleak's imprint (3 statistics + peeling, sparse
   bins placed on the bundled photos or on auxiliary CIFAR-10 images; 1 statistic; Fowl et
   al.'s cumulative design) beside breaching's imprint attack on the same images
   (``imprint_breaching_side.py`` in breaching's own environment, its default
   ``malicious-model-rtf`` server in front of a random linear classifier).
2. ``aggregation``: the same through secure aggregation of 4 clients x batch 16.
3. ``trap``: trap weights (1000 neurons), batch 32 and 64: fraction exact with peeling and with
   Boenisch et al.'s single reading of every neuron; and without a replay (train-mode
   BatchNorm).
4. ``fishing``: class fishing, batch 64 on ResNet-20 (the shared trained weights, eval-mode
   BatchNorm): the target image's PSNR/SSIM, beside Inverting Gradients on the honest model's
   gradient of the same batch; ``isolation``: how much of the gradient below the head is the
   target image's own (cosine), honest vs fished.
5. ``detection``: ``detect_modifications`` on every modification at the strengths above and
   beyond, on LeNet, mlp4 and trained ResNet-20 (true positives), and on every registry model
   with seeds 0-2 and the trained ResNets (false positives).

Batches: ``--trials`` batches drawn at random (seeded) from the shared JPEG copies of the
10,000 CIFAR-10 test images (the truth is whatever the client holds); the server's auxiliary
images are the other test images (never the batch). Downstream models: a random linear
classifier (as on breaching's side), LeNet (seeded, no BatchNorm) and trained ResNet-20 in eval
mode (BatchNorm buffers sent, as breaching's users).

    python benchmarks/malicious_servers.py [--out benchmarks/results] [--parts imprint,...]
        [--trials 5] [--threads 1] [--breaching-python /work/venv-breaching/bin/python]

Writes ``OUT/malicious_servers.json`` (after every part) and ``OUT/malicious_servers.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gradleak.attacks import get_attack
from gradleak.data import shared_data_dir
from gradleak.data.npz import load_npz
from gradleak.errors import GradleakError
from gradleak.malicious import detect_modifications, modify_model
from gradleak.metrics import gray_psnr, psnr, ssim
from gradleak.metrics.matching import EXACT_DB, score_batch
from gradleak.models import build_model, list_models
from gradleak.records import environment, write_json
from gradleak.threat import observe

HERE = Path(__file__).parent
PARTS = ("imprint", "aggregation", "trap", "fishing", "isolation", "detection")
DATA = "cifar10/test_jpeg_q75.npz"


def cifar10() -> tuple[torch.Tensor, torch.Tensor]:
    root = shared_data_dir(required=True)
    data = load_npz(root / DATA)
    return data.images, data.labels


def batch(images, labels, size: int, trial: int) -> tuple[torch.Tensor, torch.Tensor]:
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(1000 + trial))
    return images[pick[:size]], labels[pick[:size]]


LINEAR = str(HERE / "linear_classifier.py") + ":linear"  # breaching's side's downstream model


def downstream(name: str):
    if name == "resnet20":
        return build_model("resnet20", weights="pretrained"), "eval"
    if name == "linear":
        return build_model(LINEAR, normalization="cifar10"), "train"
    return build_model(name), "train"


def exact_fraction(reconstruction_images, truth) -> tuple[float, float]:
    score = score_batch(reconstruction_images, truth)
    return float((score.psnr >= EXACT_DB).float().mean()), float(score.psnr.median())


def attack_server(model_name, spec, attack, x, y, clients=1, bn=None, **settings) -> dict:
    model, mode = downstream(model_name)
    sent = modify_model(model, spec, seed=0, private=x)
    observation = observe(sent, x, y, bn_mode=bn or mode, clients=clients, knows_labels=False)
    start = time.perf_counter()
    reconstruction = get_attack(attack, **settings)(observation)
    seconds = time.perf_counter() - start
    fraction, median = exact_fraction(reconstruction.images, x)
    return {
        "exact_fraction": fraction,
        "psnr_median": median,
        "seconds": seconds,
        "notes": {k: v for k, v in reconstruction.notes.items() if k != "clients"},
    }


def breaching_imprint(python: str, x, y, clients: int, threads: int) -> dict:
    """breaching's imprint on the same images, in its own environment."""
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        settings = {
            "bins": 128,
            "mean": [0.4914, 0.4822, 0.4465],
            "std": [0.2470, 0.2435, 0.2616],
            "seed": 0,
            "threads": threads,
            "num_classes": 10,
            "clients": clients,
        }
        (case / "settings.json").write_text(json.dumps(settings))
        save_file(
            {"images": x.contiguous(), "labels": y.contiguous()}, str(case / "images.safetensors")
        )
        done = subprocess.run(
            [python, str(HERE / "imprint_breaching_side.py"), str(case)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode:
            raise GradleakError(f"breaching's side failed: {done.stderr.strip()[-500:]}")
        out = load_file(str(case / "breaching_imprint" / "reconstructions.safetensors"))
        result = json.loads((case / "breaching_imprint" / "result.json").read_text())
    fraction, median = exact_fraction(out["images"], x)
    return {
        "exact_fraction": fraction,
        "psnr_median": median,
        "seconds": result.get("seconds", {}),
        "hits": result.get("hits"),
        "versions": result.get("versions"),
    }


IMPRINT_VARIANTS = {
    "gradleak imprint (3 statistics, sparse bins on bundled photos: the default)": (
        "imprint:bins=128"
    ),
    "gradleak imprint (3 statistics, sparse bins on CIFAR-10 aux)": (
        "imprint:bins=128,data=cifar10:aux"
    ),
    "gradleak imprint (1 statistic, sparse bins on CIFAR-10 aux)": (
        "imprint:bins=128,statistics=1,data=cifar10:aux"
    ),
    "gradleak imprint (1 statistic, cumulative bins on CIFAR-10 aux: Fowl et al.'s design)": (
        "imprint:bins=128,statistics=1,structure=cumulative,data=cifar10:aux"
    ),
}


def imprint_part(args, images, labels, size: int, clients: int) -> dict:
    rows: dict[str, list[dict]] = {}
    for trial in range(args.trials):
        x, y = batch(images, labels, size, trial)
        for model_name in ("linear", "lenet", "resnet20"):
            for variant, spec in IMPRINT_VARIANTS.items():
                key = f"{variant} on {model_name}"
                rows.setdefault(key, []).append(
                    attack_server(model_name, spec, "imprint", x, y, clients=clients)
                )
        if args.breaching_python:
            rows.setdefault(
                "breaching 0.1.2 imprint (its malicious-model-rtf defaults)", []
            ).append(breaching_imprint(args.breaching_python, x, y, clients, args.threads))
        print(f"imprint {size}x{clients}: trial {trial + 1}/{args.trials}", flush=True)
    return {"batch": size, "clients": clients, "bins": 128, "rows": summarize(rows)}


def trap_part(args, images, labels) -> dict:
    rows: dict[str, list[dict]] = {}
    for size in (32, 64):
        for trial in range(args.trials):
            x, y = batch(images, labels, size, trial)
            for model_name, bn, settings, what in (
                ("lenet", None, {}, "peeling"),
                ("lenet", None, {"peel": False}, "one reading per neuron (Boenisch et al.)"),
                ("resnet20", None, {}, "peeling"),
                ("resnet20", "train", {}, "no replay (train-mode BatchNorm)"),
            ):
                key = f"batch {size}, {model_name}, {what}"
                rows.setdefault(key, []).append(
                    attack_server(model_name, "trap", "trap_weights", x, y, bn=bn, **settings)
                )
            print(f"trap {size}: trial {trial + 1}/{args.trials}", flush=True)
    return {"neurons": 1000, "rows": summarize(rows)}


def fishing_batch(images, labels, trial: int):
    """Fishing's batch of 64, its target (the rarest class) and that class's first image, and
    the start of its result row."""
    x, y = batch(images, labels, 64, trial)
    counts = torch.bincount(y, minlength=10)
    target = int(torch.argmin(torch.where(counts > 0, counts, 10_000)))
    index = int(torch.nonzero(y == target)[0])
    return x, y, target, index, {"target_class": target, "images_of_target": int(counts[target])}


def fishing_part(args, images, labels) -> dict:
    model = build_model("resnet20", weights="pretrained")
    out = []
    for trial in range(args.fishing_trials):
        x, y, target, index, row = fishing_batch(images, labels, trial)
        for what, sent, attack, iterations in (
            ("fishing", modify_model(model, f"fishing:target={target}"), "fishing",
             args.fishing_iterations),
            ("honest + Inverting Gradients", model, "inverting_gradients",
             args.honest_iterations),
        ):  # fmt: skip
            observation = observe(sent, x, y, bn_mode="eval")
            start = time.perf_counter()
            reconstruction = get_attack(attack)(observation, iterations=iterations, seed=trial)
            seconds = time.perf_counter() - start
            truth = x[index : index + 1]
            if attack == "fishing":  # its one reconstruction comes first, gray fillers after
                candidate = reconstruction.images[:1]
            else:  # honest: the best-matching image of the batch's reconstruction
                scores = psnr(reconstruction.images, truth.expand_as(reconstruction.images))
                candidate = reconstruction.images[int(scores.argmax())][None]
            row[what] = {
                "psnr": float(psnr(candidate, truth)),
                "ssim": float(ssim(candidate, truth)),
                "seconds": seconds,
                "iterations": iterations,
            }
        row["gray_psnr"] = float(gray_psnr(x[index : index + 1]))
        out.append(row)
        print(f"fishing: trial {trial + 1}/{args.fishing_trials}", flush=True)
    return {
        "iterations": args.fishing_iterations,
        "honest_iterations": args.honest_iterations,
        "trials": out,
    }


def isolation_part(args, images, labels) -> dict:
    """How much of the batch gradient below the head is the target image's own: the cosine
    similarity of the two, on the honest and on the fished model (fishing's batches)."""
    model = build_model("resnet20", weights="pretrained")
    out = []
    for trial in range(args.fishing_trials):
        x, y, target, index, row = fishing_batch(images, labels, trial)
        for what, sent in (
            ("honest", model),
            ("fishing", modify_model(model, f"fishing:target={target}")),
        ):
            whole = observe(sent, x, y, bn_mode="eval").gradients
            alone = observe(sent, x[index : index + 1], y[index : index + 1], bn_mode="eval")
            below = [k for k in whole if not k.startswith("linear.")]
            a = torch.cat([whole[k].flatten() for k in below])
            b = torch.cat([alone.gradients[k].flatten() for k in below])
            row[what] = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
        out.append(row)
    return {"trials": out}


DETECTED = [
    "imprint:bins=8,statistics=1",
    "imprint:bins=128,statistics=1",
    "imprint:bins=128",
    "imprint:bins=1024,statistics=4",
    "trap:scale=0.5,neurons=100",
    "trap:scale=0.9",
    "trap",
    "trap:scale=0.99,neurons=2000",
    "fishing:margin=1",
    "fishing:target=5",
    "fishing:target=9,margin=10000",
]


def detection_part(args) -> dict:
    positives = []
    for base in ("lenet", "mlp4", "resnet20"):
        model, _ = downstream(base)
        for spec in DETECTED:
            for seed in range(3):
                names = [f.name for f in detect_modifications(modify_model(model, spec, seed=seed))]
                positives.append({"model": base, "server": spec, "seed": seed, "found": names})
    negatives = []
    for name in list_models():
        for seed in range(3):
            names = [f.name for f in detect_modifications(build_model(name, seed=seed))]
            negatives.append({"model": name, "seed": seed, "found": names})
    for name in ("resnet20", "resnet32", "resnet44", "resnet56"):
        names = [f.name for f in detect_modifications(build_model(name, weights="pretrained"))]
        negatives.append({"model": name, "weights": "pretrained", "found": names})
    hits = [p["found"] == [p["server"].split(":")[0]] for p in positives]
    return {
        "true_positive_rate": sum(hits) / len(hits),
        "false_positive_rate": sum(bool(n["found"]) for n in negatives) / len(negatives),
        "positives": positives,
        "negatives": negatives,
    }


def summarize(rows: dict[str, list[dict]]) -> dict:
    return {
        key: {
            "exact_fraction_mean": statistics.fmean(r["exact_fraction"] for r in runs),
            "exact_fraction": [r["exact_fraction"] for r in runs],
            "psnr_median": [r["psnr_median"] for r in runs],
            "runs": runs,
        }
        for key, runs in rows.items()
    }


def markdown(report: dict) -> str:
    lines = [
        "# Malicious servers on real CIFAR-10 test images",
        "",
        "Command: `python benchmarks/malicious_servers.py` (all parts; each part's own command "
        "is in the JSON), 1 thread, 5 random batches per cell (fishing: 3).",
        "",
        "Exact: PSNR >= 60 dB after optimal matching of the reconstructed batch to the truth.",
    ]
    for part, title in (
        ("imprint", "Imprint, 128 bins, one client, batch 64"),
        ("aggregation", "Imprint, 128 bins, secure aggregation of 4 clients x batch 16"),
        ("trap", "Trap weights, 1000 neurons"),
    ):
        if part not in report:
            continue
        lines += ["", f"## {title}", "", "| attack | exact (mean) | per batch |", "|---|---|---|"]
        for key, row in report[part]["rows"].items():
            per = ", ".join(f"{v:.3f}" for v in row["exact_fraction"])
            lines.append(f"| {key} | {row['exact_fraction_mean']:.3f} | {per} |")
    if "fishing" in report:
        part = report["fishing"]
        lines += [
            "",
            "## Fishing, ResNet-20 (trained, eval-mode BatchNorm), batch 64",
            "",
            f"Target: the batch's rarest class, its first image (several images of the class: "
            f"the fished gradient is theirs together). Fishing: {part['iterations']} "
            "iterations of Inverting Gradients on the fished gradient; honest: Inverting "
            f"Gradients, {part['honest_iterations']} iterations on the honest model's gradient "
            "of the whole batch (its best-matching image; more wall time than fishing's).",
            "",
            "| batch | target class (its images) | fishing PSNR / SSIM (s) | honest IG PSNR / SSIM "
            "(s) | flat gray PSNR |",
            "|---|---|---|---|---|",
        ]
        for i, row in enumerate(part["trials"]):
            f, h = row["fishing"], row["honest + Inverting Gradients"]
            lines.append(
                f"| {i} | {row['target_class']} ({row['images_of_target']}) | "
                f"{f['psnr']:.2f} dB / {f['ssim']:.3f} ({f['seconds']:.0f}) | "
                f"{h['psnr']:.2f} dB / {h['ssim']:.3f} ({h['seconds']:.0f}) | "
                f"{row['gray_psnr']:.2f} dB |"
            )
    if "isolation" in report:
        lines += [
            "",
            "Cosine similarity, below the head, of the batch gradient and the target image's "
            "own gradient (same batches):",
            "",
            "| batch | target class (its images) | honest model | fished model |",
            "|---|---|---|---|",
        ]
        for i, row in enumerate(report["isolation"]["trials"]):
            lines.append(
                f"| {i} | {row['target_class']} ({row['images_of_target']}) | "
                f"{row['honest']:.3f} | {row['fishing']:.4f} |"
            )
    if "detection" in report:
        part = report["detection"]
        lines += [
            "",
            "## Detection (`detect_modifications`)",
            "",
            f"- true-positive rate {part['true_positive_rate']:.3f} over "
            f"{len(part['positives'])} modified models (every modification above, 3 seeds, on "
            "LeNet, mlp4 and trained ResNet-20)",
            f"- false-positive rate {part['false_positive_rate']:.3f} over "
            f"{len(part['negatives'])} registry models (seeds 0-2, trained ResNets)",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fishing-iterations", type=int, default=1000)
    parser.add_argument("--honest-iterations", type=int, default=100)
    parser.add_argument("--fishing-trials", type=int, default=3)
    parser.add_argument("--breaching-python", default="/work/venv-breaching/bin/python")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.breaching_python and not Path(args.breaching_python).exists():
        print(f"no breaching environment at {args.breaching_python}: gradleak alone")
        args.breaching_python = None
    images, labels = cifar10()
    path = args.out / "malicious_servers.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.update(
        {
            "command": "python benchmarks/malicious_servers.py " + " ".join(sys.argv[1:]),
            "threads": args.threads,
            "trials": args.trials,
            "versions": environment(),
        }
    )
    for part in args.parts.split(","):
        if part == "imprint":
            report[part] = imprint_part(args, images, labels, 64, 1)
        elif part == "aggregation":
            report[part] = imprint_part(args, images, labels, 64, 4)
        elif part == "trap":
            report[part] = trap_part(args, images, labels)
        elif part == "fishing":
            report[part] = fishing_part(args, images, labels)
        elif part == "isolation":
            report[part] = isolation_part(args, images, labels)
        elif part == "detection":
            report[part] = detection_part(args)
        else:
            raise SystemExit(f"unknown part {part!r}; parts: {', '.join(PARTS)}")
        report[part]["command"] = report["command"]
        report[part]["threads"] = args.threads
        write_json(path, report)
        (args.out / "malicious_servers.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
