"""Generative priors (DCGAN training, artifacts) and the attacks through them: GIAS, GIFD, DIP."""

from __future__ import annotations

import itertools

import pytest
import torch

from gradleak.attacks import GIAS, AttackContext, get_attack
from gradleak.attacks.generative import project_l1_ball, split_iterations
from gradleak.attacks.objectives import GradientDistance
from gradleak.errors import GradleakError
from gradleak.generative import Generator, load_generator, train_generator
from gradleak.gradient import ClientSimulator
from gradleak.learning import save_artifact
from gradleak.models import build_model
from gradleak.threat import observe

TINY = {"latent_dim": 16, "width": 8, "batch": 16}


def _statistics(images: torch.Tensor) -> torch.Tensor:
    return torch.cat([images.mean((0, 2, 3)), images.std((0, 2, 3))])


@pytest.fixture(scope="module")
def prior(bundled, tmp_path_factory):
    """A tiny generator trained for 100 steps on the 8 bundled photos (~4 s)."""
    path = tmp_path_factory.mktemp("prior") / "tiny.safetensors"
    train_generator(bundled.images, out=path, steps=100, seed=0, **TINY)
    return path


@pytest.fixture(scope="module")
def observation(bundled):
    model = build_model("lenet", seed=0)
    return observe(model, bundled.images[:2], bundled.labels[:2])


def test_resumed_training_ends_with_identical_weights(bundled, tmp_path):
    whole = train_generator(bundled.images, out=tmp_path / "a.safetensors", steps=6, **TINY)
    assert not (tmp_path / "a.ckpt.safetensors").exists()  # removed with the artifact written

    def stop(done, _total, _values):
        if done == 4:
            raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):  # in step 4: step 3's checkpoint stays
        train_generator(bundled.images, out=tmp_path / "b.safetensors", steps=6, every=3,
                        progress=stop, **TINY)  # fmt: skip
    assert (tmp_path / "b.ckpt.safetensors").is_file()
    resumed = train_generator(bundled.images, out=tmp_path / "b.safetensors", steps=6, **TINY)
    for (name, a), (_, b) in zip(
        whole.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    other = train_generator(bundled.images, out=tmp_path / "c.safetensors", steps=6, seed=1, **TINY)
    assert not torch.equal(other.blocks[0][1].weight, whole.blocks[0][1].weight)


def test_trained_samples_move_toward_the_data(bundled, prior):
    data = _statistics(bundled.images)
    torch.manual_seed(0)
    untrained = Generator(32, 3, TINY["latent_dim"], TINY["width"]).eval()
    trained = load_generator(prior)
    before = (_statistics(untrained.sample(64)) - data).norm()
    after = (_statistics(trained.sample(64)) - data).norm()
    assert after < 0.75 * before, (float(before), float(after))
    assert trained.sample(4).shape == (4, 3, 32, 32)


def test_generator_blocks_compose():
    torch.manual_seed(0)
    generator = Generator(64, 1, 8, 4).eval()
    z = torch.randn(3, 8)
    images = generator(z)
    assert images.shape == (3, 1, 64, 64) and images.min() >= 0 and images.max() <= 1
    for k in range(len(generator.blocks)):
        again = generator.forward_from(k, generator.features_at(k, z))
        torch.testing.assert_close(again, images)


def _reference_projection(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Sort-free: bisection on theta with sum(max(|v| - theta, 0)) = radius."""
    if v.abs().sum() <= radius:
        return v
    low, high = torch.tensor(0.0, dtype=v.dtype), v.abs().max()
    for _ in range(200):
        theta = (low + high) / 2
        if (v.abs() - theta).clamp(min=0).sum() > radius:
            low = theta
        else:
            high = theta
    return v.sign() * (v.abs() - (low + high) / 2).clamp(min=0)


def test_l1_projection_is_exact():
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    radii = torch.tensor([0.0, 0.5, 3.0, 10.0, 1e3, 20.0], dtype=torch.float64)
    projected = project_l1_ball(v, radii)
    for row, r, p in zip(v, radii, projected, strict=True):
        torch.testing.assert_close(p, _reference_projection(row, float(r)))
        if row.abs().sum() > r:
            torch.testing.assert_close(p.abs().sum(), r)  # on the sphere
        else:
            assert torch.equal(p, row)  # a feasible point is unchanged
    # the closest point of the ball: no feasible candidate is nearer (2-D, dense check)
    point = torch.tensor([[1.5, 0.4]], dtype=torch.float64)
    best = project_l1_ball(point, 1.0)
    torch.testing.assert_close(best, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    grid = torch.linspace(-1, 1, 201, dtype=torch.float64)
    candidates = torch.tensor(list(itertools.product(grid, grid)), dtype=torch.float64)
    candidates = candidates[candidates.abs().sum(1) <= 1]
    assert (candidates - point).norm(dim=1).min() >= (best - point).norm() - 1e-12


def test_split_iterations():
    assert split_iterations(10, 0.5, 1) == [5, 5]
    assert split_iterations(10, 0.4, 3) == [4, 2, 2, 2]
    assert split_iterations(3, 1.0, 2) == [1, 1, 1]
    assert sum(split_iterations(101, 0.3, 4)) == 101


def test_gias_stage_two_starts_from_stage_one_and_lowers_the_distance(observation, prior):
    attack = GIAS(prior=str(prior), iterations=40, restarts=2)
    view = observation.attacker_view()
    context = AttackContext(
        "gias", view, view.build_model(), 2, attack.settings, torch.Generator().manual_seed(0)
    )
    stages = attack.stages(context)
    latent = next(stages)
    with torch.no_grad():
        latent.parameterization.z.add_(0.3)  # as if optimized
    stage_one = latent.parameterization.images().detach()
    weights = next(stages)
    assert (latent.iterations, weights.iterations) == (20, 20)
    torch.testing.assert_close(weights.parameterization.images(), stage_one)
    assert torch.equal(weights.parameterization.penalty(), torch.zeros(2))

    rec = attack(observation, seed=0)
    assert len(rec.history) == 40
    assert rec.history[-1] < 0.9 * rec.history[19], (rec.history[19], rec.history[-1])
    assert rec.images.shape == (2, 3, 32, 32)


def _distance(observation, images: torch.Tensor, labels: torch.Tensor) -> float:
    model = observation.build_model()
    simulator = ClientSimulator(model)
    distance = GradientDistance("cosine", [observation.gradients[n] for n in simulator.names])
    with torch.no_grad():
        return float(distance(simulator.gradients(images[None], labels[None]))[0])


@pytest.mark.parametrize(
    ("name", "settings"), [("gifd", {"latent_fraction": 0.25}), ("dip", {"width": 16})]
)
def test_attack_lowers_the_gradient_distance(observation, prior, name, settings):
    if name == "gifd":
        settings = {**settings, "prior": str(prior)}
    rec = get_attack(name, **settings)(observation, iterations=40, seed=0)
    assert rec.gradient_distance < 0.8 * rec.history[0], (rec.history[0], rec.gradient_distance)
    assert rec.images.shape == (2, 3, 32, 32) and 0 <= rec.images.min() <= rec.images.max() <= 1
    # the kept images are the best iterate over all stages: their distance is the reported one
    kept = _distance(observation, rec.images, rec.labels)
    assert kept == pytest.approx(rec.gradient_distance, rel=1e-3)
    assert rec.gradient_distance == pytest.approx(min(rec.history))


def test_generative_attacks_need_a_fitting_prior(observation, prior, bundled, tmp_path):
    for name in ("gias", "gifd"):
        with pytest.raises(GradleakError, match="needs a trained generator: pass prior="):
            get_attack(name)(observation, iterations=1)
    other = save_artifact(tmp_path / "inv.safetensors", {"w": torch.zeros(1)}, {}, kind="inverter")
    with pytest.raises(GradleakError, match="not a 'generator'"):
        get_attack("gias", prior=str(other))(observation, iterations=1)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(GradleakError, match="not a valid safetensors"):
        load_generator(corrupt)
    gray = build_model("lenet", seed=0, in_channels=1)
    gray_observation = observe(gray, bundled.images[:1, :1], bundled.labels[:1])
    with pytest.raises(GradleakError, match="train-prior --size 32 --channels 1"):
        get_attack("gifd", prior=str(prior))(gray_observation, iterations=1)
