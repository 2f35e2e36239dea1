"""The ``learned-inversion`` study: a learned inverter (Learning to Invert, Wu et al. 2023) against
Inverting Gradients, alone and as its initialization, under simple defenses and model drift, and
the batch size predicted from the gradient.

1. Inverters for the (untrained, seeded) model are trained on the attacker's auxiliary images,
   which never contain the private images (near-copies removed): one per fixed batch size, and one
   across batch sizes 1..``max_batch`` with a batch-size head. A seeded random part of the auxiliary
   images is held out of training to measure the batch-size prediction.
2. Private CIFAR-10 test images, at every batch size: the inverter alone (``learned``), Inverting
   Gradients from noise (``ig``) and from the inverter's output (``learned+ig``); the PSNR per
   iteration gives the iterations each needs to reach ``ig``'s final PSNR.
3. Defenses on the observation (Gaussian noise, top-k pruning) at batch size 1: ``learned`` and
   ``ig`` on the defended gradient.
4. Drift: the model moves by FedAvg rounds; the inverter trained at round 0 attacks round k.
5. Batch-size prediction accuracy for B = 1..``max_batch`` on held-out auxiliary batches, beside
   the analytic estimate (:func:`gradleak.analysis.batch_size.estimate_batch_size`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from gradleak.data import load_images
from gradleak.data.auxiliary import auxiliary_images
from gradleak.defenses import apply_defense
from gradleak.experiments.runner import make_batches
from gradleak.experiments.study import ProgressFactory, Study, steps_to_reach
from gradleak.gradient import estimate_batch_size
from gradleak.models import build_model
from gradleak.models.weights import weight_drift
from gradleak.threat import observe
from gradleak.threat.fedavg import fedavg_rounds

PRESET = "learned-inversion"


@dataclass(frozen=True)
class LearnedInversionSettings:
    """Everything that determines the study's results (recorded in ``results.json``)."""

    model: str = "lenet"
    data: str = "cifar10"
    auxiliary: str = "cifar10:aux"
    n_images: int = 20
    held_out: int = 1000
    batch_sizes: tuple[int, ...] = (1, 4, 8)
    max_batch: int = 16
    train_steps: int = 8000
    batch_train_steps: int = 4000
    range_train_steps: int = 2500
    hidden: int = 1024
    batch_hidden: int = 512
    iterations: int = 1000
    restarts: int = 1
    defense_images: int = 8
    noise: tuple[float, ...] = (1e-3, 1e-2)
    prune_keep: tuple[float, ...] = (0.3, 0.1)
    drift_rounds: tuple[int, ...] = (1, 5, 20, 50)
    drift_lr: float = 0.1
    size_trials: int = 20
    seed: int = 0


def run_learned_inversion(
    out: str | Path,
    *,
    images: str | None = None,
    n_images: int | None = None,
    iterations: int | None = None,
    restarts: int | None = None,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    settings: LearnedInversionSettings | None = None,
) -> dict:
    """Run the study (see the module docstring); resumable; returns ``results.json``'s content."""
    from gradleak.learned import load_inverter, train_inverter

    study = Study(
        out, PRESET, settings or LearnedInversionSettings(), progress, images=images,
        n_images=n_images, iterations=iterations, restarts=restarts,
        seed=None if settings else seed,
    )  # fmt: skip
    s = study.settings
    private = load_images(s.data).subset(slice(0, s.n_images))
    auxiliary = auxiliary_images(s.auxiliary, exclude=private)
    # A seeded random hold-out: data files are often sorted by class.
    order = torch.randperm(len(auxiliary), generator=torch.Generator().manual_seed(s.seed))
    held_out = auxiliary.subset(order[: s.held_out])
    training = auxiliary.subset(order[s.held_out :].sort().values)
    model = build_model(s.model, seed=s.seed)

    def inverter(name: str, sizes: tuple[int, int], steps: int):
        # One output slot per image: wider batches get narrower hidden layers to stay in budget.
        hidden = s.hidden if sizes[1] == 1 else s.batch_hidden

        def train(path: Path):
            train_inverter(
                model, training, out=path, steps=steps, batch_sizes=sizes, hidden=hidden,
                seed=s.seed, private=private,
            )  # fmt: skip

        return str(study.artifact(name, train, {"steps": steps}))

    sizes = dict.fromkeys((1, *s.batch_sizes))
    fixed = {
        b: inverter(f"inverter-b{b}", (b, b), s.train_steps if b == 1 else s.batch_train_steps)
        for b in sizes
    }
    ranged = load_inverter(
        inverter(f"inverter-b1-{s.max_batch}", (1, s.max_batch), s.range_train_steps)
    )

    def attack_all(case_id, observation, group, record, variants):
        for variant, method, extra in variants:
            study.attack(
                f"{case_id}/{variant}",
                observation,
                method,
                extra,
                iterations=None if method == "learned" and extra["refine"] == "none" else
                s.iterations,
                restarts=s.restarts,
                seed=s.seed,
                record={"variant": variant, "group": f"{variant}, {group}", **record},
            )  # fmt: skip

    # 2. batch sizes: learned alone, IG, IG from the learned start
    for b in s.batch_sizes:
        path = fixed[b]
        variants = (
            ("learned", "learned", {"inverter": path, "refine": "none"}),
            ("ig", "inverting_gradients", {}),
            ("learned+ig", "learned", {"inverter": path, "refine": "ig"}),
        )
        for batch in make_batches(private, b, "single" if b == 1 else "distinct"):
            ids = "+".join(private.ids[i] for i in batch)
            observation = observe(model, private.images[batch], private.labels[batch])
            attack_all(f"B={b}/{ids}", observation, f"B={b}", {"batch_size": b}, variants)

    # 3. defenses at batch size 1
    path1 = fixed[1]
    defended_variants = (
        ("learned", "learned", {"inverter": path1, "refine": "none"}),
        ("ig", "inverting_gradients", {}),
    )
    defenses = [("noise", {"sigma": v}) for v in s.noise] + [
        ("prune", {"keep": v}) for v in s.prune_keep
    ]
    for i in range(min(s.defense_images, len(private))):
        clean = observe(model, private.images[i : i + 1], private.labels[i : i + 1])
        for name, params in defenses:
            label = f"{name} {next(iter(params.values())):g}"
            defended = apply_defense(clean, name, **({"seed": i} if name == "noise" else {}),
                                     **params)  # fmt: skip
            attack_all(
                f"defense/{label}/{private.ids[i]}",
                defended,
                label,
                {"batch_size": 1, "defense": label},
                defended_variants,
            )

    # 4. drift: the round-0 inverter against the model after k FedAvg rounds
    rounds = dict(
        fedavg_rounds(
            model, training.images, training.labels, rounds=max(s.drift_rounds, default=0),
            lr=s.drift_lr, seed=s.seed,
        )
    )  # fmt: skip
    for k in s.drift_rounds:
        drifted = rounds[k]
        drift = weight_drift(drifted.net.state_dict(), model.net.state_dict())
        for i in range(min(s.defense_images, len(private))):
            observation = observe(drifted, private.images[i : i + 1], private.labels[i : i + 1])
            attack_all(
                f"drift/k={k}/{private.ids[i]}",
                observation,
                f"round +{k}",
                {"batch_size": 1, "rounds": k, "weight_drift": drift},
                (("learned", "learned", {"inverter": path1, "refine": "none"}),),
            )

    # 5. batch-size prediction on held-out auxiliary batches
    generator = torch.Generator().manual_seed(s.seed)
    for b in range(1, s.max_batch + 1):
        case_id = f"batch-size/B={b}"
        if study.results.done(case_id) is not None:
            continue
        hits, analytic = [], []
        for _ in range(s.size_trials):
            pick = torch.randperm(len(held_out), generator=generator)[:b]
            observation = observe(
                model, held_out.images[pick], held_out.labels[pick], knows_batch_size=False
            )
            hits.append(ranged.predict_batch_size(observation) == b)
            analytic.append(estimate_batch_size(observation.attacker_view()) == b)
        study.add(
            {
                "id": case_id,
                "variant": "batch-size prediction",
                "group": f"batch size B={b}",
                "batch_size": b,
                "accuracy": statistics.fmean(hits),
                "analytic_accuracy": statistics.fmean(analytic),
                "trials": s.size_trials,
            }
        )

    summary = study.finish()
    summary["speedup"] = initialization_speedup(summary["cases"])
    return summary


def initialization_speedup(cases: list[dict], tolerance: float = 0.1) -> dict:
    """Per batch size: the steps Inverting Gradients needs to come within ``tolerance`` dB of its
    own final PSNR, started from noise (``ig``) and from the inverter's output (``learned+ig``).

    ``ratios`` are noise-start steps over inverter-start steps (a start already there counts as
    one step); ``start_above`` counts cases whose inverter output alone already scored above.
    """
    by_id = {c["id"]: c for c in cases}
    result: dict[str, dict] = {}
    for case in cases:
        if case.get("variant") != "ig" or "defense" in case or not case.get("trajectory"):
            continue
        learned = by_id.get(case["id"].rsplit("/", 1)[0] + "/learned+ig")
        if learned is None or not learned.get("trajectory"):
            continue
        target = case["psnr"] - tolerance
        from_noise = steps_to_reach(case["trajectory"], target)
        from_learned = steps_to_reach(learned["trajectory"], target)
        entry = result.setdefault(
            f"B={case['batch_size']}",
            {"cases": 0, "ratios": [], "noise_steps": [], "learned_steps": [], "start_above": 0},
        )
        entry["cases"] += 1
        entry["start_above"] += from_learned == 0
        if from_noise is not None and from_learned is not None:
            entry["noise_steps"].append(from_noise)
            entry["learned_steps"].append(from_learned)
            entry["ratios"].append(max(from_noise, 1) / max(from_learned, 1))
    for entry in result.values():
        for key in ("ratios", "noise_steps", "learned_steps"):
            values = entry[key]
            entry[f"median_{key[:-1]}"] = statistics.median(values) if values else None
    return result
