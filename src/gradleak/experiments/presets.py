"""The reference write-up's experiments as presets: plain data, no logic.

Each preset names a model, a data set, how private batches are formed from it, and the attack
variants compared on every batch. :func:`gradleak.experiments.run_preset` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradleak.errors import GradleakError

COMPOSITIONS = ("single", "distinct", "repeated")


@dataclass(frozen=True)
class Variant:
    """One attack configuration compared inside a preset."""

    name: str
    attack: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """An experiment: model, private data, batch formation, attack variants and budget.

    Attributes:
        data: an image spec for :func:`gradleak.data.load_images` (overridable by ``--images``).
        n_images: how many images of ``data`` (in order; one per class when
            ``one_per_class``) are used to form the private batches.
        batches: (batch size, composition) pairs; the composition says how batches are formed:
            ``single`` (batch size 1), ``distinct`` (all labels different) or ``repeated`` (all
            labels equal).
        weights: the model's weights: ``None`` (seeded initialization, an untrained model) or
            ``"pretrained"`` (the trained weights the registry knows for it).
        knows_labels: whether the threat model gives the server the labels.
        record_inapplicable: record an attack that does not apply to a case (it raises a
            GradleakError, e.g. R-GAP at batch size 2) as a result instead of stopping.
    """

    name: str
    description: str
    model: str
    data: str
    variants: tuple[Variant, ...]
    image_size: int = 32
    width: int | None = None
    weights: str | None = None
    num_classes: int = 10
    n_images: int = 20
    one_per_class: bool = False
    batches: tuple[tuple[int, str], ...] = ((1, "single"),)
    knows_labels: bool = True
    bn_mode: str = "train"
    iterations: int | None = 200
    restarts: int = 1
    record_inapplicable: bool = False


@dataclass(frozen=True)
class SweepPreset:
    """An experiment that is not one attack per batch (e.g. a label-recovery sweep).

    ``runner`` is ``"module:function"``; the function is called as
    ``function(out, images=, n_images=, iterations=, restarts=, seed=, progress=)`` and returns
    the results dictionary it also wrote to ``out/results.json``.
    """

    name: str
    description: str
    runner: str


_L2 = Variant("l2", "dlg", {"labels": "known"})
_COSINE = Variant("cosine", "dlg", {"labels": "known", "distance": "cosine"})

# GradInversion's priors, each alone on top of cosine + TV (GradInversion's optimizer), all of them
# together (GradInversion's defaults), and Inverting Gradients itself; all share one TV weight.
_PRIOR_OFF = {"l2": 0.0, "bn": 0.0, "group": 0.0}
_PRIOR_ABLATION = (
    Variant("inverting_gradients", "inverting_gradients"),
    Variant("cosine+tv", "gradinversion", _PRIOR_OFF),
    Variant("+l2", "gradinversion", {**_PRIOR_OFF, "l2": 1e-6}),
    Variant("+bn", "gradinversion", {**_PRIOR_OFF, "bn": 1e-3}),
    Variant("+group", "gradinversion", {**_PRIOR_OFF, "group": 0.01}),
    Variant("gradinversion", "gradinversion"),
)

PRESETS: dict[str, Preset | SweepPreset] = {
    p.name: p
    for p in (
        Preset(
            name="demo",
            description="iDLG on LeNet: bundled photos, labels hidden from the server, batch 1",
            model="lenet",
            data="bundled",
            n_images=4,
            knows_labels=False,
            variants=(Variant("idlg", "idlg"),),
            iterations=100,
        ),
        Preset(
            name="seed-mlp-flowers",
            description="4-layer MLP, Flowers-17 (64x64, one per class), batch 1, known label, l2",
            model="mlp4",
            data="flowers17",
            image_size=64,
            num_classes=17,
            n_images=17,
            one_per_class=True,
            variants=(_L2,),
            iterations=100,
        ),
        Preset(
            name="seed-lenet-cifar",
            description="LeNet, CIFAR-10, batch 1, known label, l2 vs cosine (L-BFGS)",
            model="lenet",
            data="cifar10",
            variants=(_L2, _COSINE),
        ),
        Preset(
            name="seed-lenet-bs2",
            description="LeNet, CIFAR-10, batch 2: distinct vs repeated labels, l2 vs cosine",
            model="lenet",
            data="cifar10",
            batches=((2, "distinct"), (2, "repeated")),
            variants=(_L2, _COSINE),
        ),
        Preset(
            name="discard-mlp",
            description="Bias attack and R-GAP on the 4-layer MLP: exact at batch 1, lost at 2",
            model="mlp4",
            data="cifar10",
            n_images=8,
            knows_labels=False,
            batches=((1, "single"), (2, "distinct"), (2, "repeated")),
            variants=(Variant("bias", "bias"), Variant("rgap", "rgap")),
            iterations=1,
            record_inapplicable=True,
        ),
        Preset(
            name="repeated-labels",
            description="Unmixing the first FC layer (mlp4, width 256): repeated vs distinct",
            model="mlp4",
            data="cifar10",
            width=256,
            n_images=1000,
            batches=((4, "repeated"), (4, "distinct"), (8, "repeated"), (8, "distinct"))
            + tuple((b, "repeated") for b in (16, 32, 64)),
            variants=(Variant("fc_unmix", "fc_unmix"),),
            iterations=None,
            record_inapplicable=True,
        ),
        Preset(
            name="seed-tv-sweep",
            description="LeNet, CIFAR-10, batch 2 (distinct labels), cosine + TV 1e-4..1e-1",
            model="lenet",
            data="cifar10",
            n_images=8,
            batches=((2, "distinct"),),
            variants=tuple(
                Variant(f"tv={tv:g}", "dlg", {"labels": "known", "distance": "cosine", "tv": tv})
                for tv in (1e-4, 1e-3, 1e-2, 1e-1)
            ),
        ),
        Preset(
            name="priors-ablation",
            description=(
                "Trained ResNet-20, CIFAR-10, batch 1/4/8: Inverting Gradients vs GradInversion "
                "with each prior alone and all together"
            ),
            model="resnet20",
            weights="pretrained",
            data="cifar10",
            n_images=8,
            one_per_class=True,
            batches=((1, "single"), (4, "distinct"), (8, "distinct")),
            variants=_PRIOR_ABLATION,
            iterations=2000,
            restarts=4,
        ),
        SweepPreset(
            name="learned-inversion",
            description=(
                "Learned inverter (LeNet, CIFAR-10) vs Inverting Gradients at batch 1/4/8, as "
                "IG's start, under noise/pruning and FedAvg drift; batch size from gradients"
            ),
            runner="gradleak.experiments.learned_inversion:run_learned_inversion",
        ),
        SweepPreset(
            name="prior-shift",
            description=(
                "GIAS and GIFD with generative priors trained in-distribution, on other classes "
                "and another data set, vs the data-free DIP and Inverting Gradients (LeNet)"
            ),
            runner="gradleak.experiments.prior_shift:run_prior_shift",
        ),
        SweepPreset(
            name="labels-sweep",
            description=(
                "Batch label recovery and batch-size estimation vs batch size "
                "(untrained FC/MNIST, LeNet/CIFAR-10)"
            ),
            runner="gradleak.experiments.label_sweep:run_label_sweep",
        ),
    )
}


def get_preset(name: str) -> Preset | SweepPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise GradleakError(
            f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
        ) from None


def list_presets() -> list[str]:
    return sorted(PRESETS)
