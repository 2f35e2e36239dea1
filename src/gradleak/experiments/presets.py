"""The reference write-up's experiments, as data: grids of cases, and the studies.

Every preset is an :class:`~gradleak.experiments.spec.Experiment`; ``gradleak run NAME`` runs it
with :func:`~gradleak.experiments.runner.run_experiment`. This module imports no torch.
"""

from __future__ import annotations

from gradleak.errors import GradleakError
from gradleak.experiments import huang, label_sweep, learned_inversion, prior_shift
from gradleak.experiments.grid import Grid, grid_cases
from gradleak.experiments.spec import AttackSpec, Experiment, ModelSpec, as_items


def grid_experiment(name: str, description: str, grid: Grid) -> Experiment:
    """An experiment that is one grid (its settings are the grid)."""
    return Experiment(name, description, settings=grid, cases=grid_cases)


def attack(variant: str, name: str | None = None, **settings) -> AttackSpec:
    return AttackSpec(variant, name or variant, as_items(settings))


_L2 = attack("l2", "dlg", labels="known")
_COSINE = attack("cosine", "dlg", labels="known", distance="cosine")
_LENET = (ModelSpec("lenet"),)
# Its own budget (the grid's 200 steps would double it): 100 L-BFGS steps, 16 unmixing starts.
_FEATURE_UNMIX = AttackSpec("feature_unmix", "feature_unmix", iterations=100, restarts=16)
_MLP = (ModelSpec("mlp4"),)

# GradInversion's priors, each alone on top of cosine + TV (GradInversion's optimizer), all of them
# together (GradInversion's defaults), and Inverting Gradients itself; all share one TV weight.
_PRIOR_OFF = {"l2": 0.0, "bn": 0.0, "group": 0.0}
_PRIOR_ABLATION = (
    attack("inverting_gradients"),
    attack("cosine+tv", "gradinversion", **_PRIOR_OFF),
    attack("+l2", "gradinversion", **{**_PRIOR_OFF, "l2": 1e-6}),
    attack("+bn", "gradinversion", **{**_PRIOR_OFF, "bn": 1e-3}),
    attack("+group", "gradinversion", **{**_PRIOR_OFF, "group": 0.01}),
    attack("gradinversion"),
)

PRESETS: dict[str, Experiment] = {
    e.name: e
    for e in (
        grid_experiment(
            "demo",
            "iDLG on LeNet: bundled photos, labels hidden from the server, batch 1",
            Grid("bundled", _LENET, (attack("idlg"),), n_images=4, knows_labels=False,
                 iterations=100),
        ),
        grid_experiment(
            "seed-mlp-flowers",
            "4-layer MLP, Flowers-17 (64x64, one per class), batch 1, known label, l2",
            Grid("flowers17", _MLP, (_L2,), image_size=64, n_images=17, one_per_class=True,
                 iterations=100),
        ),
        grid_experiment(
            "seed-lenet-cifar",
            "LeNet, CIFAR-10, batch 1, known label, l2 vs cosine (L-BFGS)",
            Grid("cifar10", _LENET, (_L2, _COSINE), iterations=200),
        ),
        grid_experiment(
            "seed-lenet-bs2",
            "LeNet, CIFAR-10, batch 2: distinct vs repeated labels, l2 vs cosine (the "
            "write-up's failure) vs feature_unmix (its fix)",
            Grid("cifar10", _LENET, (_L2, _COSINE, _FEATURE_UNMIX),
                 batches=((2, "distinct"), (2, "repeated")), iterations=200),
        ),
        grid_experiment(
            "discard-mlp",
            "Bias attack and R-GAP on the 4-layer MLP: exact at batch 1, lost at 2",
            Grid("cifar10", _MLP, (attack("bias"), attack("rgap")), n_images=8,
                 knows_labels=False,
                 batches=((1, "single"), (2, "distinct"), (2, "repeated"))),
        ),
        grid_experiment(
            "repeated-labels",
            "Unmixing the first FC layer (mlp4, width 256): repeated vs distinct",
            Grid("cifar10", (ModelSpec("mlp4", width=256),), (attack("fc_unmix"),),
                 n_images=1000,
                 batches=((4, "repeated"), (4, "distinct"), (8, "repeated"), (8, "distinct"),
                          (16, "repeated"), (32, "repeated"), (64, "repeated"))),
        ),
        grid_experiment(
            "seed-tv-sweep",
            "LeNet, CIFAR-10, batch 2 (distinct labels), cosine + TV 1e-4..1e-1",
            Grid("cifar10", _LENET,
                 tuple(attack(f"tv={tv:g}", "dlg", labels="known", distance="cosine", tv=tv)
                       for tv in (1e-4, 1e-3, 1e-2, 1e-1)),
                 n_images=8, batches=((2, "distinct"),), iterations=200),
        ),
        grid_experiment(
            "priors-ablation",
            "Trained ResNet-20, CIFAR-10, batch 1/4/8: Inverting Gradients vs GradInversion "
            "with each prior alone and all together",
            Grid("cifar10", (ModelSpec("resnet20", weights="pretrained"),), _PRIOR_ABLATION,
                 n_images=8, one_per_class=True,
                 batches=((1, "single"), (4, "distinct"), (8, "distinct")),
                 iterations=2000, restarts=4),
        ),
        learned_inversion.EXPERIMENT,
        prior_shift.EXPERIMENT,
        label_sweep.EXPERIMENT,
        huang.EXPERIMENT,
    )
}  # fmt: skip


def get_preset(name: str) -> Experiment:
    try:
        return PRESETS[name]
    except KeyError:
        raise GradleakError(
            f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None


def list_presets() -> list[str]:
    return sorted(PRESETS)
