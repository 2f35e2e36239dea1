"""The ``learned-inversion`` study: a learned inverter (Learning to Invert, Wu et al. 2023) against
Inverting Gradients, alone and as its initialization, under simple defenses and model drift, and
the batch size predicted from the gradient.

1. Inverters for the (untrained, seeded) model are trained on the attacker's auxiliary images,
   which never contain the private images (near-copies removed): one per fixed batch size, and one
   across batch sizes 1..``max_batch`` with a batch-size head. A seeded random part of the auxiliary
   images is held out of training to measure the batch-size prediction.
2. Private CIFAR-10 test images, at every batch size: the inverter alone (``learned``), Inverting
   Gradients from noise (``ig``) and from the inverter's output (``learned+ig``); the PSNR per
   iteration gives the iterations each needs to reach ``ig``'s final PSNR (``speedup``).
3. Defenses on the observation (Gaussian noise, top-k pruning) at batch size 1: ``learned`` and
   ``ig`` on the defended gradient.
4. Drift: the model moves by FedAvg rounds; the inverter trained at round 0 attacks round k.
5. Batch-size prediction for B = 1..``max_batch`` on held-out auxiliary batches: the inverter's
   head beside the analytic estimate (:func:`gradleak.gradient.estimate_batch_size`).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from dataclasses import dataclass

from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import (
    ArtifactRef,
    ArtifactSpec,
    AttackSpec,
    BatchSizeSpec,
    Case,
    DefenseSpec,
    Experiment,
    FedAvgSpec,
    ImagesSpec,
    ModelSpec,
    ObservationSpec,
    Split,
)


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

    @property
    def private(self) -> ImagesSpec:
        return ImagesSpec(self.data, first=self.n_images)

    def auxiliary_part(self, part: str) -> ImagesSpec:
        """The auxiliary images without the private ones, split by a seeded permutation into
        ``held_out`` (kept in permutation order) and the ``rest`` (training, sorted back)."""
        split = Split(self.seed, part, held_out=self.held_out, sort=part == "rest")
        return ImagesSpec(self.auxiliary, exclude=self.private, split=split)

    @property
    def network(self) -> ModelSpec:
        return ModelSpec(self.model, seed=self.seed)

    @property
    def ranged(self) -> str:
        return f"inverter-b1-{self.max_batch}"


def artifacts(s: LearnedInversionSettings) -> list[ArtifactSpec]:
    """An inverter per fixed batch size (1 and ``batch_sizes``) and one for 1..``max_batch``."""

    def inverter(name: str, sizes: tuple[int, int], steps: int) -> ArtifactSpec:
        # One output slot per image: wider batches get narrower hidden layers to stay in budget.
        hidden = s.hidden if sizes[1] == 1 else s.batch_hidden
        return ArtifactSpec(
            name,
            "inverter",
            s.auxiliary_part("rest"),
            steps=steps,
            seed=s.seed,
            model=s.network,
            private=s.private,
            options=(("batch_sizes", sizes), ("hidden", hidden)),
        )

    fixed = [
        inverter(f"inverter-b{b}", (b, b), s.train_steps if b == 1 else s.batch_train_steps)
        for b in dict.fromkeys((1, *s.batch_sizes))
    ]
    return [*fixed, inverter(s.ranged, (1, s.max_batch), s.range_train_steps)]


def _learned(b: int, refine: str = "none", variant: str = "learned") -> AttackSpec:
    settings = (("inverter", ArtifactRef(f"inverter-b{b}")), ("refine", refine))
    return AttackSpec(variant, "learned", settings)


def cases(s: LearnedInversionSettings):
    """Parts 2-5 of the module docstring, in order."""
    common = {
        "data": s.data,
        "models": (s.network,),
        "seeds": (s.seed,),
        "iterations": s.iterations,
        "restarts": s.restarts,
    }
    ig = AttackSpec("ig", "inverting_gradients")
    parts = [
        Grid(
            methods=(_learned(b), ig, _learned(b, "ig", "learned+ig")),
            batches=((b, "single" if b == 1 else "distinct"),),
            n_images=s.n_images,
            group="{variant}, B={batch_size}",
            name=f"B={b}",
            **common,
        )
        for b in s.batch_sizes
    ]
    first = min(s.defense_images, s.n_images)
    defenses = [(DefenseSpec("noise", (("sigma", v),)),) for v in s.noise]
    defenses += [(DefenseSpec("prune", (("keep", v),)),) for v in s.prune_keep]
    parts.append(
        Grid(
            methods=(_learned(1), ig),
            defenses=tuple(defenses),
            n_images=first,
            group="{variant}, {defense}",
            name="defense",
            **common,
        )
    )
    for k in s.drift_rounds:
        fedavg = FedAvgSpec(s.auxiliary_part("rest"), k, lr=s.drift_lr, seed=s.seed)
        parts.append(
            Grid(
                methods=(_learned(1),),
                n_images=first,
                group=f"round +{k}",
                name=f"drift/k={k}",
                record=(("rounds", k),),
                **{**common, "models": (dataclasses.replace(s.network, fedavg=fedavg),)},
            )
        )
    yield from itertools.chain.from_iterable(grid_cases(grid) for grid in parts)
    yield from batch_size_cases(s)


def batch_size_cases(s: LearnedInversionSettings):
    """Held-out auxiliary batches of every size 1..``max_batch`` (``size_trials`` each, drawn by
    one seeded generator), hidden batch size: the learned head and the analytic estimate."""
    import torch

    from gradleak.experiments import build

    held_out = s.auxiliary_part("held_out")
    count = len(build.images(held_out))
    generator = torch.Generator().manual_seed(s.seed)
    methods = (BatchSizeSpec("learned head", ArtifactRef(s.ranged)), BatchSizeSpec("analytic"))
    for b in range(1, s.max_batch + 1):
        for trial in range(s.size_trials):
            pick = torch.randperm(count, generator=generator)[:b]
            observation = ObservationSpec(
                s.network, held_out, tuple(pick.tolist()), knows_batch_size=False
            )
            for method in methods:
                yield Case(
                    f"batch-size/B={b}/trial{trial}/{method.variant}",
                    observation,
                    method,
                    seed=s.seed,
                    record={
                        "variant": method.variant,
                        "group": f"batch size B={b}",
                        "batch_size": b,
                        "trial": trial,
                    },
                )


def summary(results: dict) -> dict:
    """``speedup`` (:func:`initialization_speedup`) and ``batch_size_accuracy``: per batch size,
    the fraction of trials each estimator got right."""
    hits: dict[int, dict[str, list[bool]]] = {}
    for case in results["cases"]:
        if "correct" in case:
            hits.setdefault(case["batch_size"], {}).setdefault(case["variant"], []).append(
                case["correct"]
            )
    accuracy = {
        f"B={b}": {variant: statistics.fmean(v) for variant, v in by_variant.items()}
        for b, by_variant in sorted(hits.items())
    }
    return {"speedup": initialization_speedup(results["cases"]), "batch_size_accuracy": accuracy}


def initialization_speedup(cases: list[dict], tolerance: float = 0.1) -> dict:
    """Per batch size: the steps Inverting Gradients needs to come within ``tolerance`` dB of its
    own final PSNR, started from noise (``ig``) and from the inverter's output (``learned+ig``).

    ``ratios`` are noise-start steps over inverter-start steps (a start already there counts as
    one step); ``start_above`` counts cases whose inverter output alone already scored above.
    """
    by_id = {c["id"]: c for c in cases}
    result: dict[str, dict] = {}
    for case in cases:
        if case.get("variant") != "ig" or case.get("defense") != "none":
            continue
        learned = by_id.get(case["id"].rsplit("/", 1)[0] + "/learned+ig")
        if not case.get("trajectory") or learned is None or not learned.get("trajectory"):
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


def steps_to_reach(trajectory: list, target: float) -> int | None:
    """The first step whose PSNR reaches ``target`` (None if never)."""
    return next((int(step) for step, value in trajectory if value >= target), None)


EXPERIMENT = Experiment(
    "learned-inversion",
    "Learned inverter (LeNet, CIFAR-10) vs Inverting Gradients at batch 1/4/8, as IG's start, "
    "under noise/pruning and FedAvg drift; batch size from gradients",
    settings=LearnedInversionSettings(),
    cases=cases,
    artifacts=artifacts,
    summary=summary,
)
