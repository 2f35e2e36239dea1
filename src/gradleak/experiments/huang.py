"""The ``huang`` preset: attack strength against the attacker's assumptions and against defenses.

After Huang, Gupta, Song, Li and Arora, "Evaluating Gradient Inversion Attacks and Defenses in
Federated Learning" (NeurIPS 2021, https://arxiv.org/abs/2112.00059). They show that
GradInversion's published strength rests on assumptions a real server does not have, chiefly the
private batch's BatchNorm statistics (BN_exact) and its labels, and re-evaluate it with each
relaxed: BN statistics of a proxy batch (BN_proxy) or inferred from the global model
(BN_infer, here the model's running statistics), labels recovered from the gradient, and (added
here) the batch size estimated from the gradient; then defenses against the strongest attack.

This preset reproduces the *shape* of that evaluation on a trained CIFAR-10 ResNet-20 with small
batches, not its scale: rows of assumptions (the strongest, each relaxed alone, all relaxed) for
GradInversion (:mod:`gradleak.attacks.gradinversion`, its BN prior's target set by
``bn_statistics``), Inverting Gradients under the strongest and the weakest assumptions (it has
no BN prior), and GradInversion under the strongest assumptions against each defense of
``defenses`` (:func:`gradleak.experiments.sweep.parse_defenses` strings). Every row is a grid of
its own threat model: the observation grants exactly what the row assumes (``knows_labels``,
``knows_batch_size``, ``knows_bn_statistics``).

Budget (CPU, stated in the description; ``--iterations``, ``--restarts``, ``--n-images``
override it): the first ``n_images`` CIFAR-10 test images with distinct labels, attacked one by one
and as one batch of ``n_images``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import AttackSpec, Experiment, ModelSpec, as_items

BN_NAMES = {"exact": "BN exact", "proxy": "BN proxy", "running": "BN inferred", None: "no BN prior"}


@dataclass(frozen=True)
class Assumptions:
    """One row: an attack and what the attacker is assumed to know.

    Attributes:
        attack: ``"gradinversion"`` or ``"inverting_gradients"``.
        bn_statistics: GradInversion's BN target (``"exact"``, ``"proxy"``, ``"running"``;
            :mod:`gradleak.attacks.bn_statistics`); None for an attack without the BN prior.
        labels: ``"known"`` or ``"recovered"`` (from the gradient: the label strategy ``auto``).
        batch_size: ``"known"`` or ``"estimated"`` (from the gradient's output layer).
    """

    attack: str = "gradinversion"
    bn_statistics: str | None = "exact"
    labels: str = "known"
    batch_size: str = "known"

    @property
    def name(self) -> str:
        short = {"gradinversion": "GradInversion", "inverting_gradients": "InvertingGradients"}
        return (
            f"{short.get(self.attack, self.attack)}: {BN_NAMES[self.bn_statistics]}, "
            f"labels {self.labels}, B {self.batch_size}"
        )


ROWS = (
    Assumptions(),  # the strongest assumptions (GradInversion's own evaluation, BN_exact)
    Assumptions(bn_statistics="proxy"),
    Assumptions(bn_statistics="running"),
    Assumptions(labels="recovered"),
    Assumptions(batch_size="estimated"),
    Assumptions(bn_statistics="running", labels="recovered", batch_size="estimated"),
    Assumptions("inverting_gradients", None),
    Assumptions("inverting_gradients", None, labels="recovered", batch_size="estimated"),
)
DEFENSES = ("prune:keep=0.1", "noise:sigma=0.01", "clip:max_norm=1")


@dataclass(frozen=True)
class HuangSettings:
    """Everything that determines the preset's results (recorded in ``results.json``).

    Attributes:
        data, model, weights: the private images and the attacked (trained) model.
        n_images: the first ``n_images`` images with distinct labels: each attacked alone, and
            together as batches of each size in ``batch_sizes`` larger than 1.
        max_batches: at most this many batches of each size (None: all).
        rows: the assumption rows, each attacked without a defense.
        defenses: defense spec strings (``"prune:keep=0.1"``, ``"noise:sigma=0.01"``, ...,
            several joined by ``+``), each applied to the observation attacked by ``defended``.
        defended: the assumptions the defenses are evaluated against (the strongest).
        bn_proxy: the auxiliary images of the ``BN proxy`` rows.
        iterations, restarts, seeds: the attacks' budget and seeds.
    """

    data: str = "cifar10"
    model: str = "resnet20"
    weights: str = "pretrained"
    n_images: int = 4
    batch_sizes: tuple[int, ...] = (1, 4)
    max_batches: int | None = None
    rows: tuple[Assumptions, ...] = ROWS
    defenses: tuple[str, ...] = DEFENSES
    defended: Assumptions = ROWS[0]
    bn_proxy: str = "cifar10:aux"
    iterations: int = 300
    restarts: int = 1
    seeds: tuple[int, ...] = (0,)


def _method(row: Assumptions, s: HuangSettings) -> AttackSpec:
    settings: dict = {}
    if row.labels == "known":
        settings["labels"] = "known"
    if row.batch_size == "estimated":
        settings["estimate_batch_size"] = True
    if row.bn_statistics is not None:
        settings["bn_statistics"] = row.bn_statistics
        if row.bn_statistics == "proxy":
            settings["bn_proxy"] = s.bn_proxy
    return AttackSpec(row.name, row.attack, as_items(settings))


def _grid(row: Assumptions, s: HuangSettings, defense: str | None) -> Grid:
    from gradleak.experiments.sweep import parse_defenses

    for value, allowed in ((row.labels, ("known", "recovered")),
                           (row.batch_size, ("known", "estimated"))):  # fmt: skip
        if value not in allowed:
            from gradleak.errors import GradleakError

            raise GradleakError(f"assumption {value!r} of row {row.name!r}: choose {allowed}")
    defenses = parse_defenses(defense) if defense else ()
    return Grid(
        s.data,
        (ModelSpec(s.model, weights=s.weights),),
        (_method(row, s),),
        batches=tuple((b, "single" if b == 1 else "distinct") for b in s.batch_sizes),
        defenses=(defenses,),
        seeds=s.seeds,
        n_images=s.n_images,
        max_batches=s.max_batches,
        one_per_class=True,
        knows_labels=row.labels == "known",
        knows_batch_size=row.batch_size == "known",
        knows_bn_statistics=row.bn_statistics == "exact",
        iterations=s.iterations,
        restarts=s.restarts,
        name=defense or "",
        group="{variant}, " + (f"{defense}, " if defense else "") + "B={batch_size}",
        record=as_items(
            {
                "row": row.name,
                "bn_statistics": row.bn_statistics or "none",
                "labels_assumed": row.labels,
                "batch_size_assumed": row.batch_size,
            }
        ),
    )


def cases(s: HuangSettings):
    """Every assumption row without a defense, then the defended row under each defense."""
    for row in s.rows:
        yield from grid_cases(_grid(row, s, None))
    for defense in s.defenses:
        yield from grid_cases(_grid(s.defended, s, defense))


def _description(s: HuangSettings) -> str:
    variants = len(s.rows) + len(s.defenses)
    per_variant = sum(min(s.n_images // b, s.max_batches or s.n_images) for b in s.batch_sizes)
    return (
        "Huang et al. (NeurIPS 2021): GradInversion and Inverting Gradients vs the attacker's "
        "assumptions (BN statistics exact / proxy / inferred, labels known / recovered, batch "
        "size known / estimated) and vs defenses, trained ResNet-20, CIFAR-10 32x32. CPU budget: "
        f"{s.iterations} iterations, {s.restarts} restart(s), the first {s.n_images} test images "
        f"with distinct labels at batch sizes {', '.join(map(str, s.batch_sizes))}: {variants} "
        f"variants x {per_variant} cases, about 15-20 min on 2 cores"
    )


EXPERIMENT = Experiment(
    "huang", _description(HuangSettings()), settings=HuangSettings(), cases=cases
)
