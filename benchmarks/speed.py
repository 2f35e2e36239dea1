"""Benchmark: seconds per iteration of gradleak's batched restarts against a plain PyTorch loop.

For each model the same Inverting Gradients step (cosine distance + TV, signed Adam, boxed pixels,
batch of one real CIFAR-10 image, known label) is timed two ways:

- ``gradleak``: the attack engine, all R restarts as one ``vmap``-ed computation;
- ``plain``: the textbook implementation, one ``torch.autograd.grad(..., create_graph=True)`` per
  restart and a Python loop over the R restarts.

Targets (issue 6): LeNet/MLP, 8 restarts cost <= 2x one restart; ConvNet, gradleak's cost per
restart within 1.1x of the plain loop.

    python benchmarks/speed.py [--threads 2] [--out benchmarks/results]

Writes ``OUT/speed.json`` and ``OUT/speed.md``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from gradleak.attacks import get_attack
from gradleak.attacks.priors import total_variation
from gradleak.data import load_images
from gradleak.models import build_model
from gradleak.report import environment, write_json
from gradleak.threat import observe

# model -> (restart counts, iterations timed)
CASES = {
    "mlp4": ((1, 8, 32), 60),
    "lenet": ((1, 8, 32), 60),
    "convnet": ((1, 4), 8),
    "resnet18": ((1,), 10),
}
WARMUP = 3


def time_gradleak(observation, restarts: int, iterations: int) -> float:
    """Seconds per iteration of gradleak's Inverting Gradients, setup excluded."""
    stamps: list[float] = []
    attack = get_attack("inverting_gradients", patience=None)
    attack(
        observation,
        iterations=iterations + WARMUP,
        restarts=restarts,
        callback=lambda *_: stamps.append(time.perf_counter()),
    )
    return (stamps[-1] - stamps[WARMUP - 1]) / iterations


def time_plain(observation, restarts: int, iterations: int) -> float:
    """Seconds per iteration of a plain loop over restarts, each with its own autograd graph."""
    model = observation.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    target = [observation.gradients[n] for n, _ in model.net.named_parameters()]
    target_norm = torch.sqrt(sum(t.pow(2).sum() for t in target))
    labels = observation.labels
    shape = (len(labels), *model.input_shape)
    candidates = [torch.randn(shape).clamp(0, 1).requires_grad_(True) for _ in range(restarts)]
    optimizers = [torch.optim.Adam([x], lr=0.1) for x in candidates]

    def step() -> None:
        for x, optimizer in zip(candidates, optimizers, strict=True):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            objective = 1 - dot / (norm * target_norm) + 1e-4 * total_variation(x[None]).sum()
            objective.backward()
            x.grad.sign_()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(0, 1)

    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_images("cifar10", size=32)
    rows = []
    for name in args.models.split(","):
        restart_counts, iterations = CASES[name]
        model = build_model(name, seed=0)
        observation = observe(model, data.images[:1], data.labels[:1])
        for restarts in restart_counts:
            ours = time_gradleak(observation, restarts, iterations)
            plain = time_plain(observation, restarts, iterations)
            rows.append(
                {
                    "model": name,
                    "restarts": restarts,
                    "gradleak_s_per_it": ours,
                    "plain_s_per_it": plain,
                    "ratio_vs_plain": ours / plain,
                }
            )
            print(rows[-1], flush=True)
        one = next(r for r in rows if r["model"] == name and r["restarts"] == 1)
        for row in rows:
            if row["model"] == name:
                row["ratio_vs_one_restart"] = row["gradleak_s_per_it"] / one["gradleak_s_per_it"]

    report = {
        "benchmark": "speed",
        "command": f"python benchmarks/speed.py --threads {args.threads}",
        "versions": environment(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "speed.json", report)
    lines = [
        "# Seconds per iteration: gradleak's batched restarts vs a plain PyTorch loop",
        "",
        f"`{report['command']}`; torch {torch.__version__}, {args.threads} threads, "
        "CIFAR-10 image 0, batch size 1, Inverting Gradients step.",
        "",
        "| model | restarts | gradleak s/it | plain loop s/it | gradleak / plain | vs 1 restart |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['restarts']} | {r['gradleak_s_per_it']:.4f} | "
        f"{r['plain_s_per_it']:.4f} | {r['ratio_vs_plain']:.2f} | "
        f"{r['ratio_vs_one_restart']:.2f} |"
        for r in rows
    ]
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
