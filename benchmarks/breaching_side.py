"""breaching's half of ``benchmarks/vs_breaching.py``: runs in breaching's own environment.

Never imported by gradleak and never imports it: only torch, numpy, safetensors, json and
``breaching`` (PyPI 0.1.2, https://github.com/JonasGeiping/breaching). Run it with the Python of
a separate virtual environment (see ``vs_breaching.py`` and ``/work/shared/bench/breaching.md``):

    /work/venv-breaching/bin/python benchmarks/breaching_side.py CASE_DIR
    /work/venv-breaching/bin/python benchmarks/breaching_side.py --probe   # versions, or why not

``CASE_DIR`` (written by ``vs_breaching.py``) holds

- ``settings.json``: model (``convnet`` width 64 or ``resnet18``), num_classes, mean/std,
  bn_mode, iterations, restarts (1), seed, breaching's TV scale, snapshot_every, threads, and the
  names of the raw network's parameters and buffers in module order;
- ``weights.safetensors``: ``state_dict`` of the raw network (no normalization wrapper);
- ``gradients.safetensors``: the observed gradient, one tensor per parameter;
- ``labels.safetensors``: the batch's labels (known to the attacker);
- ``check_images.safetensors``: for the sanity checks only, never for the attack: the client's
  images in [0, 1] with gradleak's logits on them, and a random ``probe_images`` batch.

What it does:

1. builds breaching's own network (``breaching.cases.models.construct_model``: ``ConvNet`` is
   hard-wired to width 64; ``ResNet18`` is the CIFAR ResNet, 3x3 stem, BasicBlocks [2, 2, 2, 2],
   downsample "B") and loads the weights by position: the i-th parameter (buffer) of the file's
   order goes to breaching's i-th parameter (buffer); any count or shape mismatch is an error;
2. builds the attacker's reconstruction model exactly as ``attacker.reconstruct`` will (payload
   buffers ``None`` gives train-mode BatchNorm with batch statistics, ``track_running_stats``
   off; payload buffers given gives eval mode) and checks on it that (a) its logits on the check
   images equal gradleak's (relative error < 1e-4) and (b) the gradient it computes on them equals
   the observed gradient (relative error of the whole vector < 1e-4); it reports both;
3. evaluates breaching's objective (cosine part and TV part separately) on the check images and
   on the probe images, so that the caller can compare them with gradleak's objective;
4. runs breaching's ``invertinggradients`` attack as in breaching's minimal example
   (``get_config`` with overrides, ``prepare_attack``, ``attacker.reconstruct([payload],
   [shared_data], {}, dryrun=False)``), 1 restart, the given iterations and TV scale;
5. records a trajectory: ``OptimizationBasedAttacker._compute_objective`` is wrapped (it is called
   once per iteration, before the step, when ``iteration`` steps are done) and so is the objective
   closure it returns (called before the optimizer updates the candidate, so its value belongs
   to the candidate as it is then). Every ``snapshot_every`` iterations (and at the end) a copy
   of the current candidate and of the best candidate so far (lowest objective, the candidate
   evaluated with that value: gradleak's rule for its frames) is kept with the wall time; the
   time spent on snapshots and on tracking the best is measured and subtracted;
6. writes ``CASE_DIR/breaching/snapshots.safetensors`` (``best``, ``current``: (K, B, C, H, W);
   ``output``: what ``reconstruct`` returned; all in [0, 1] pixels, breaching's normalization
   undone) and ``CASE_DIR/breaching/result.json`` (snapshot iterations and seconds, total
   seconds, seconds per iteration, versions, threads, the checks).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

FORMAT = "vs_breaching.breaching_side/1"
MODELS = {"convnet": "ConvNet", "resnet18": "ResNet18", "resnet20": "ResNet20-optionA"}
CHECK_TOLERANCE = 1e-4

# What this script assumes of breaching's invertinggradients config (checked, not assumed).
EXPECTED_ATTACK = {
    "attack_type": "optimization",
    "objective.type": "cosine-similarity",
    "objective.scale": 1.0,
    "objective.task_regularization": 0.0,
    "restarts.scoring": "cosine-similarity",
    "init": "randn",
    "normalize_gradients": False,
    "optim.optimizer": "adam",
    "optim.signed": "hard",
    "optim.step_size": 0.1,
    "optim.boxed": True,
    "optim.step_size_decay": "step-lr",
    "optim.langevin_noise": 0.0,
    "optim.warmup": 0,
    "optim.grad_clip": None,
    "augmentations": None,
    "differentiable_augmentations": False,
    "regularization.total_variation.inner_exp": 1,
    "regularization.total_variation.outer_exp": 1,
    "impl.dtype": "float",
    "impl.mixed_precision": False,
    "impl.JIT": None,
}

_TORCHVISION_LIBRARY = None  # keeps the schema definitions alive


class CheckFailed(RuntimeError):
    """A sanity check between gradleak's case and breaching's model failed."""


def import_breaching():
    """``import breaching`` with the torchvision workaround of ``/work/shared/bench/breaching.md``.

    The CUDA-only torchvision wheels cannot load their compiled ops beside CPU torch, and
    ``torchvision/_meta_registrations.py`` then fails on the missing ``nms``/``qnms`` schemas;
    defining the two schemas before the first ``import torchvision`` fixes the import (breaching
    uses no compiled torchvision op).
    """
    global _TORCHVISION_LIBRARY
    if "torchvision" not in sys.modules and _TORCHVISION_LIBRARY is None:
        library = torch.library.Library("torchvision", "DEF")
        for schema in (
            "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
        ):
            # Already defined only where torchvision's own compiled ops loaded.
            with contextlib.suppress(RuntimeError):
                library.define(schema)
        _TORCHVISION_LIBRARY = library
    import breaching

    return breaching


def versions() -> dict:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "breaching": version("breaching"),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "hydra-core": version("hydra-core"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def _lookup(cfg, dotted: str):
    value = cfg
    for key in dotted.split("."):
        value = value[key] if value is not None else None
    return value


def build_config(breaching, settings: dict):
    """breaching's config: case ``1_single_image_small`` (CIFAR-10) and attack
    ``invertinggradients``, with iterations, restarts and TV scale overridden, and the data
    normalization set to the one the observed model uses."""
    overrides = [
        "case=1_single_image_small",
        "attack=invertinggradients",
        f"case.model={MODELS[settings['model']]}",
        f"case.data.classes={int(settings['num_classes'])}",
        f"attack.optim.max_iterations={int(settings['iterations'])}",
        f"attack.restarts.num_trials={int(settings['restarts'])}",
        f"attack.regularization.total_variation.scale={float(settings['tv_scale'])!r}",
    ]
    cfg = breaching.get_config(overrides=overrides)
    cfg.case.data.mean = [float(v) for v in settings["mean"]]
    cfg.case.data.std = [float(v) for v in settings["std"]]
    check_attack_config(cfg.attack)
    return cfg, overrides


def check_attack_config(cfg_attack) -> None:
    """Fail unless breaching's attack config is the ``invertinggradients`` one gradleak is
    matched to (``EXPECTED_ATTACK``)."""
    wrong = {
        key: _lookup(cfg_attack, key)
        for key, want in EXPECTED_ATTACK.items()
        if _lookup(cfg_attack, key) != want
    }
    if wrong:
        raise CheckFailed(
            f"breaching's invertinggradients config differs from what this benchmark matches "
            f"gradleak to: {wrong} (expected {[EXPECTED_ATTACK[k] for k in wrong]})"
        )


class _OptionAShortcut(torch.nn.Module):
    """He et al.'s option A: subsample by the stride, zero-pad the new channels."""

    def __init__(self, extra: int, stride: int):
        super().__init__()
        self.stride, self.pad = stride, (extra // 2, extra - extra // 2)

    def forward(self, x):
        return torch.nn.functional.pad(
            x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, *self.pad)
        )


class _CifarBlock(torch.nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        conv = torch.nn.Conv2d
        self.conv1 = conv(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        same = stride == 1 and in_planes == planes
        self.shortcut = (
            torch.nn.Identity() if same else _OptionAShortcut(planes - in_planes, stride)
        )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(torch.nn.Module):
    """He et al. (2016, Sec. 4.2) CIFAR ResNet-(6n+2), option-A shortcuts, written here in plain
    torch: breaching 0.1.2 has no option-A ResNet, and its attack takes any ``torch.nn.Module``."""

    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = torch.nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            stage_blocks = []
            for index in range(blocks):
                stride = 2 if stage > 0 and index == 0 else 1
                stage_blocks.append(_CifarBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(torch.nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = torch.nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(breaching, cfg, settings: dict):
    name = settings["model"]
    if name not in MODELS:
        raise CheckFailed(f"model {name!r} is not one of {sorted(MODELS)}")
    if list(cfg.case.data.shape) != [int(settings["in_channels"]), *[settings["image_size"]] * 2]:
        raise CheckFailed(f"image shape {list(cfg.case.data.shape)} differs from the case's")
    if name == "resnet20":
        from breaching.cases.models.model_preparation import VisionContainer

        net = CifarResNet(
            20, int(settings["width"]), int(cfg.case.data.classes), int(settings["in_channels"])
        )
        model = VisionContainer(net)
        model.name = MODELS[name]
        # construct_model's loss for classification tasks
        return model, torch.jit.script(torch.nn.CrossEntropyLoss())
    if int(settings.get("width", 64)) != 64:
        raise CheckFailed(f"breaching builds {name} at width 64 only, got {settings['width']}")
    model, loss_fn = breaching.cases.models.construct_model(
        cfg.case.model, cfg.case.data, pretrained=False
    )
    return model, loss_fn


@torch.no_grad()
def load_by_position(model: torch.nn.Module, state: dict, settings: dict) -> list[list[str]]:
    """Copy the file's tensors into breaching's model, matched by position and shape."""
    param_names, buffer_names = settings["parameter_names"], settings["buffer_names"]
    if sorted(state) != sorted(param_names + buffer_names):
        extra = sorted(set(state) - set(param_names + buffer_names))
        missing = sorted(set(param_names + buffer_names) - set(state))
        raise CheckFailed(f"weights file and names disagree: extra {extra}, missing {missing}")
    mapping = []
    for kind, names, own in (
        ("parameter", param_names, list(model.named_parameters())),
        ("buffer", buffer_names, list(model.named_buffers())),
    ):
        if len(names) != len(own):
            raise CheckFailed(
                f"{len(names)} {kind}s in gradleak's network, {len(own)} in breaching's "
                f"{type(model.model).__name__}"
            )
        for name, (own_name, tensor) in zip(names, own, strict=True):
            source = state[name]
            if tuple(source.shape) != tuple(tensor.shape):
                raise CheckFailed(
                    f"{kind} shape mismatch: gradleak '{name}' {list(source.shape)} vs "
                    f"breaching '{own_name}' {list(tensor.shape)}"
                )
            if source.dtype.is_floating_point != tensor.dtype.is_floating_point:
                raise CheckFailed(f"{kind} dtype mismatch: '{name}' vs '{own_name}'")
            tensor.copy_(source.to(tensor.dtype))
            mapping.append([name, own_name])
    return mapping


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    num = math.sqrt(
        sum(float((g.double() - w.double()).pow(2).sum()) for g, w in zip(got, want, strict=True))
    )
    den = math.sqrt(sum(float(w.double().pow(2).sum()) for w in want))
    return num / max(den, 1e-30)


def sanity_checks(attacker, rec_model, loss_fn, gradients, labels, check, dm, ds) -> dict:
    """Forward, gradient and objective checks on the model the attack will optimize against."""
    model = copy.deepcopy(rec_model)  # train-mode forward passes must not touch the original
    images = check["images"].to(torch.float32)
    normalized = (images - dm) / ds
    logits = model(normalized)
    forward_error = relative_error([logits.detach()], [check["logits"]])
    loss = loss_fn(model(normalized), labels)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    gradient_error = relative_error(list(grads), gradients)
    per_layer = [relative_error([g], [w]) for g, w in zip(grads, gradients, strict=True)]
    result = {
        "model_mode": "train" if model.training else "eval",
        "forward_relative_error": forward_error,
        "gradient_relative_error": gradient_error,
        "gradient_relative_error_max_layer": max(per_layer),
        "tolerance": CHECK_TOLERANCE,
    }
    # breaching's own objective (cosine part) and regularizer (TV part), as the attack adds them.
    attacker.objective.initialize(attacker.loss_fn, attacker.cfg.impl, None)
    for key in ("images", "probe_images"):
        candidate = ((check[key].to(torch.float32) - dm) / ds).requires_grad_(True)
        cosine, _ = attacker.objective(copy.deepcopy(rec_model), gradients, candidate, labels)
        tv = sum(float(r(candidate.detach())) for r in attacker.regularizers)
        result[f"objective_{key}"] = {"cosine": float(cosine.detach()), "tv": tv}
    if not forward_error < CHECK_TOLERANCE:
        raise CheckFailed(
            f"breaching's model gives other logits than gradleak's on the check images "
            f"(relative error {forward_error:.3g} >= {CHECK_TOLERANCE}): architectures differ"
        )
    if not gradient_error < CHECK_TOLERANCE:
        raise CheckFailed(
            f"breaching's model does not reproduce the observed gradient on the check images "
            f"(relative error {gradient_error:.3g} >= {CHECK_TOLERANCE}, mode "
            f"{result['model_mode']})"
        )
    return result


class Trajectory:
    """Snapshots and timings collected by the wrapped objective (see the module docstring)."""

    def __init__(self, every: int, iterations: int, dm: torch.Tensor, ds: torch.Tensor):
        self.every, self.iterations, self.dm, self.ds = every, iterations, dm, ds
        self.start = time.perf_counter()
        self.overhead = 0.0
        self.candidate: torch.Tensor | None = None
        self.best: torch.Tensor | None = None
        self.best_value = math.inf
        self.iteration_seconds: dict[int, float] = {}
        self.snapshot_iterations: list[int] = []
        self.snapshot_seconds: list[float] = []
        self.best_images: list[torch.Tensor] = []
        self.current_images: list[torch.Tensor] = []
        self.objective_values: list[float] = []

    def restart_clock(self) -> None:
        self.start, self.overhead = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.start - self.overhead

    def pixels(self, candidate: torch.Tensor) -> torch.Tensor:
        return (candidate.detach() * self.ds + self.dm).clamp(0, 1).clone()

    def reached(self, done: int) -> None:
        """``done`` optimizer steps are complete; the candidate is as they left it."""
        now = self.elapsed()
        self.iteration_seconds[done] = now
        if done % self.every == 0 or done == self.iterations:
            begin = time.perf_counter()
            current = self.pixels(self.candidate)
            best = current if self.best is None else self.pixels(self.best)
            self.snapshot_iterations.append(done)
            self.snapshot_seconds.append(now)
            self.current_images.append(current)
            self.best_images.append(best)
            self.overhead += time.perf_counter() - begin

    def evaluated(self, value: torch.Tensor, candidate: torch.Tensor) -> None:
        begin = time.perf_counter()
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        self.objective_values.append(value)
        if value < self.best_value:
            self.best_value, self.best = value, candidate.detach().clone()
        self.overhead += time.perf_counter() - begin


def instrument(attacker, trajectory: Trajectory) -> None:
    """Wrap the attacker's per-iteration objective construction and its trial loop."""
    compute_objective = attacker._compute_objective
    run_trial = attacker._run_trial

    def wrapped_compute_objective(candidate, labels, rec_model, optimizer, shared_data, iteration):
        trajectory.candidate = candidate
        trajectory.reached(iteration)
        closure = compute_objective(candidate, labels, rec_model, optimizer, shared_data, iteration)

        def wrapped_closure():
            value = closure()
            trajectory.evaluated(value, candidate)
            return value

        return wrapped_closure

    def wrapped_run_trial(*args, **kwargs):
        output = run_trial(*args, **kwargs)
        # Steps taken: one objective evaluation each (fewer than asked if it stopped early).
        trajectory.iterations = len(trajectory.objective_values)
        trajectory.reached(trajectory.iterations)
        return output

    attacker._compute_objective = wrapped_compute_objective
    attacker._run_trial = wrapped_run_trial


def run(case_dir: Path) -> dict:
    settings = json.loads((case_dir / "settings.json").read_text())
    threads = int(settings["threads"])
    torch.set_num_threads(threads)
    breaching = import_breaching()
    cfg, overrides = build_config(breaching, settings)
    model, loss_fn = build_model(breaching, cfg, settings)
    mapping = load_by_position(model, load_file(str(case_dir / "weights.safetensors")), settings)

    observed = load_file(str(case_dir / "gradients.safetensors"))
    gradients = [observed[name].to(torch.float32) for name in settings["parameter_names"]]
    labels = load_file(str(case_dir / "labels.safetensors"))["labels"].long()
    check = load_file(str(case_dir / "check_images.safetensors"))
    batch_size = len(labels)

    setup = dict(device=torch.device("cpu"), dtype=torch.float)
    attacker = breaching.attacks.prepare_attack(model, loss_fn, cfg.attack, setup)
    bn_mode = settings["bn_mode"]
    server_payload = dict(
        parameters=[p.detach().clone() for p in model.parameters()],
        # No buffers: breaching reconstructs in train mode (batch statistics, the client's
        # mode in local training); public buffers would put both sides in eval mode.
        buffers=None if bn_mode == "train" else [b.detach().clone() for b in model.buffers()],
        metadata=cfg.case.data,
    )
    shared_data = dict(
        gradients=[g.clone() for g in gradients],
        buffers=None,
        metadata=dict(num_data_points=batch_size, labels=labels.clone(), local_hyperparams=None),
    )
    # The very model reconstruct() will build: same payload, same code path.
    rec_model = attacker._construct_models_from_payload_and_buffers(
        [server_payload], [dict(shared_data)]
    )[0]
    if (bn_mode == "train") != rec_model.training:
        raise CheckFailed(f"breaching built its model in the wrong BatchNorm mode for {bn_mode}")
    dm = torch.as_tensor(cfg.case.data.mean, dtype=torch.float)[None, :, None, None]
    ds = torch.as_tensor(cfg.case.data.std, dtype=torch.float)[None, :, None, None]
    checks = sanity_checks(attacker, rec_model, loss_fn, gradients, labels, check, dm, ds)
    checks["parameter_mapping"] = mapping
    del check  # the check images go no further

    iterations = int(settings["iterations"])
    if int(settings["restarts"]) != 1:
        raise CheckFailed("the trajectory is recorded for 1 restart only")
    timed = timed_reconstruct(
        attacker,
        server_payload,
        shared_data,
        iterations=iterations,
        snapshot_every=int(settings["snapshot_every"]),
        seed=int(settings["seed"]),
        dm=dm,
        ds=ds,
    )
    reconstruction, trajectory = timed["reconstruction"], timed["trajectory"]
    total, per_iteration = timed["total_seconds"], timed["seconds_per_iteration"]
    done, seconds = trajectory.iterations, trajectory.iteration_seconds
    output_time = seconds[done]
    out_dir = case_dir / "breaching"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "best": torch.stack(trajectory.best_images).contiguous(),
            "current": torch.stack(trajectory.current_images).contiguous(),
            "output": trajectory.pixels(reconstruction["data"]).contiguous(),
            "labels": reconstruction["labels"].long().contiguous(),
        },
        str(out_dir / "snapshots.safetensors"),
    )
    milestones = sorted(float(m) for m in _milestones(iterations, cfg.attack.optim.step_size_decay))
    result = {
        "format": FORMAT,
        "versions": versions(),
        "threads": threads,
        "settings": {k: v for k, v in settings.items() if not k.endswith("_names")},
        "overrides": overrides,
        "attack_config": _container(cfg.attack),
        "data_normalization": {"mean": list(cfg.case.data.mean), "std": list(cfg.case.data.std)},
        "lr_milestones": milestones,
        "bn_mode": "train" if rec_model.training else "eval",
        "checks": checks,
        "iterations": done,
        "snapshot_iterations": trajectory.snapshot_iterations,
        "snapshot_seconds": trajectory.snapshot_seconds,
        "output_seconds": output_time,
        "total_seconds": total,
        "seconds_per_iteration": per_iteration,
        "measurement_overhead_seconds": trajectory.overhead,
        "iteration_seconds": [seconds[k] for k in sorted(seconds)],
        "objective_values": trajectory.objective_values,
        "best_objective": trajectory.best_value,
    }
    (out_dir / "result.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    return result


def timed_reconstruct(
    attacker, server_payload, shared_data, *, iterations, snapshot_every, seed, dm, ds
) -> dict:
    """``attacker.reconstruct`` (1 restart) under a :class:`Trajectory`, seeded with ``seed``.

    Returns the reconstruction, the trajectory, the total wall seconds of ``reconstruct`` and
    the seconds per iteration (from the end of step 1 to the last step, so that set-up and
    label recovery are not counted; the whole time when only one step ran).
    """
    trajectory = Trajectory(snapshot_every, iterations, dm, ds)
    instrument(attacker, trajectory)
    torch.manual_seed(seed)
    trajectory.restart_clock()
    start = time.perf_counter()
    reconstruction, _stats = attacker.reconstruct([server_payload], [shared_data], {}, dryrun=False)
    total = time.perf_counter() - start
    done = trajectory.iterations
    seconds = trajectory.iteration_seconds
    per_iteration = (
        (seconds[done] - seconds[1]) / (done - 1) if done > 1 and 1 in seconds else seconds[done]
    )
    return {
        "reconstruction": reconstruction,
        "trajectory": trajectory,
        "total_seconds": total,
        "seconds_per_iteration": per_iteration,
    }


def _milestones(iterations: int, decay) -> list[float]:
    if decay != "step-lr":
        return []
    # breaching.attacks.auxiliaries.common.optimizer_lookup
    return [iterations // 2.667, iterations // 1.6, iterations // 1.142]


def _container(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case_dir", type=Path, nargs="?")
    parser.add_argument("--probe", action="store_true", help="print versions as JSON and exit")
    args = parser.parse_args()
    if args.probe:
        import_breaching()
        print(json.dumps(versions()))
        return 0
    if args.case_dir is None:
        parser.error("CASE_DIR is required unless --probe")
    try:
        result = run(args.case_dir)
    except CheckFailed as err:
        print(f"CHECK FAILED: {err}", file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc()
        return 1
    checks = result["checks"]
    print(
        f"breaching: {result['iterations']} iterations, {result['seconds_per_iteration']:.4f} "
        f"s/iteration, {result['total_seconds']:.1f} s; gradient check "
        f"{checks['gradient_relative_error']:.2e}, forward check "
        f"{checks['forward_relative_error']:.2e}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
