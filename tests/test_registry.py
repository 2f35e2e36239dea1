"""Attacks describe themselves: the registry, requirements, check(), and the torch-free catalog."""

from __future__ import annotations

import dataclasses

import pytest

from gradleak import catalog
from gradleak.analysis import analyze
from gradleak.attacks import (
    ATTACKS,
    Attack,
    AttackContext,
    Reconstruction,
    check_all,
    register_attack,
    requirement,
)
from gradleak.attacks.registry import ATTACKS as REGISTRY
from gradleak.data import load_images
from gradleak.errors import GradleakError
from gradleak.models import build_model, list_models, model_info
from gradleak.threat import observe


@pytest.fixture(scope="module")
def photos():
    return load_images("bundled", size=32, n=2)


@pytest.fixture(scope="module")
def mlp_pair(photos):
    return observe(build_model("mlp4", seed=0), photos.images, photos.labels)


@pytest.fixture(scope="module")
def lenet_one(photos):
    return observe(build_model("lenet", seed=0), photos.images[:1], photos.labels[:1])


def test_the_catalog_reads_the_registries_without_importing_them():
    assert catalog.attacks() == {name: cls.summary() for name, cls in ATTACKS.items()}
    assert catalog.models() == {n: model_info(n)["description"] for n in list_models()}


def test_only_iterative_attacks_take_a_budget():
    closed_form = {name for name, cls in ATTACKS.items() if not cls.iterative()}
    assert {"bias", "rgap"} <= closed_form and "dlg" not in closed_form
    for name in closed_form:
        fields = {f.name for f in dataclasses.fields(ATTACKS[name].defaults)}
        assert not fields & {"iterations", "restarts"}


def test_every_attack_declares_what_it_needs_and_says_why_it_does_not_apply(mlp_pair, lenet_one):
    for cls in ATTACKS.values():
        assert cls.expected and all(r.description for r in cls.requirements), cls.name
    on_mlp = {name: problems for name, (_, problems) in check_all(mlp_pair).items()}
    on_lenet = {name: problems for name, (_, problems) in check_all(lenet_one).items()}
    assert on_mlp["bias"] == [] and on_mlp["fc_unmix"] == [] and on_mlp["idlg"] == []
    assert on_mlp["rgap"] == ["'rgap' reconstructs a batch of one; the batch has 2"]
    assert on_lenet["rgap"] == [] and on_lenet["dip"] == []
    assert "first layer is fully connected" in on_lenet["fc_unmix"][0]
    for name in ("gias", "gifd", "learned"):
        assert "needs a trained" in on_lenet[name][0]


def test_check_names_a_hidden_batch_size(photos):
    hidden = observe(
        build_model("lenet"), photos.images[:1], photos.labels[:1], knows_batch_size=False
    )
    problems = ATTACKS["idlg"]().check(hidden)
    assert problems == ["the threat model hides the batch size; pass batch_size= (or --batch-size)"]
    assert ATTACKS["idlg"]().check(hidden, batch_size=1) == []
    assert ATTACKS["fc_unmix"]().check(hidden) != problems  # guesses the size from the rank
    pair = observe(build_model("lenet"), photos.images, photos.labels)
    assert ATTACKS["idlg"]().check(pair, batch_size=1) == [
        "batch size 1 contradicts the observation's known 2"
    ]
    with pytest.raises(GradleakError, match="contradicts the observation's known 2"):
        ATTACKS["idlg"]()(pair, batch_size=1)


def test_analyze_lists_every_registered_attack(lenet_one):
    report = analyze(lenet_one)
    assert set(report["attacks"]) == set(ATTACKS)
    assert report["attacks"]["rgap"] == {
        "applies": True,
        "expect": "the image in closed form where every layer's system has full rank",
    }
    assert not report["attacks"]["bias"]["applies"]


def test_a_new_attack_is_one_registered_class(lenet_one):
    """What adding an attack takes: a module with one class; the registry, check() and the
    reports pick it up (registered here and removed again)."""

    @dataclasses.dataclass(frozen=True)
    class GraySettings:
        level: float = 0.5

    @requirement("a gray level in [0, 1]")
    def valid_level(context: AttackContext) -> str | None:
        return None if 0 <= context.settings.level <= 1 else "level must lie in [0, 1]"

    @register_attack
    class Gray(Attack):
        """Gray: every image a flat gray (a baseline any attack must beat)."""

        name = "gray-baseline"
        defaults = GraySettings()
        requirements = (valid_level,)
        expected = "a flat gray image"

        def reconstruct(self, context: AttackContext) -> Reconstruction:
            import torch

            shape = (context.batch_size, *context.model.input_shape)
            return Reconstruction(
                images=torch.full(shape, context.settings.level),
                labels=torch.zeros(context.batch_size, dtype=torch.long),
                attack=self.name,
            )

    try:
        assert analyze(lenet_one)["attacks"]["gray-baseline"]["expect"] == "a flat gray image"
        assert Gray(level=2.0).check(lenet_one) == ["level must lie in [0, 1]"]
        assert Gray()(lenet_one).images.shape == (1, 3, 32, 32)
        with pytest.raises(GradleakError, match="closed-form"):
            Gray()(lenet_one, iterations=3)
    finally:
        del REGISTRY["gray-baseline"]


def test_subpackages_import_downward_only():
    """No import cycle between subpackages; reading the gradient sits below attacks and
    analysis; the attack base class does not depend on reports."""
    import ast
    from pathlib import Path

    import gradleak

    root = Path(gradleak.__file__).parent
    imports: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        package = parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("gradleak.") and name.split(".")[1] != package:
                    imports.setdefault(package, set()).add(name.split(".")[1])

    def reaches(start: str, goal: str, seen=()) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, (*seen, n)))
            for n in imports.get(start, ())
        )

    for package in imports:
        assert not reaches(package, package), f"import cycle through {package}"
    assert not imports["gradient"] & {"attacks", "analysis", "experiments", "report"}
    assert "analysis" not in imports["attacks"] and "report" not in imports["attacks"]
    base = (root / "attacks" / "base.py").read_text()
    assert "gradleak.report" not in base
