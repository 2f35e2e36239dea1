"""Benchmark (optional, not in CI): gradleak against breaching on the same gradient-inversion case.

breaching (PyPI 0.1.2, https://github.com/JonasGeiping/breaching) is the reference framework of
Inverting Gradients' authors. For every case (model and batch size) this script

1. builds gradleak's model (``build_model(name, seed=0)``: ``convnet``, the Inverting Gradients
   ConvNet at width 64, or ``resnet18``, the CIFAR ResNet-18: 3x3 stride-1 stem, no max-pool,
   BasicBlocks [2, 2, 2, 2], projection shortcuts), takes the first B lossless CIFAR-10 test
   images with distinct labels and observes the client's gradient with
   :func:`gradleak.threat.observe` (train-mode BatchNorm: batch statistics, running statistics
   untouched; breaching reconstructs so when the server payload has no buffers, which is what
   this benchmark sends. breaching's shipped honest-server config sends public buffers, which
   puts its user and attacker in eval mode: ``--bn-mode eval`` compares that instead);
2. writes the case (raw network weights, observed gradient, labels, settings, and, for the sanity
   checks only, the true images with gradleak's logits) and runs ``breaching_side.py`` with the
   Python of breaching's own virtual environment: breaching builds its own network, loads the
   weights by parameter position and shape, checks that its logits and its gradient on the true
   images equal gradleak's (relative error < 1e-4), then runs its ``invertinggradients`` attack
   and records a PSNR trajectory (see ``breaching_side.py``);
3. runs gradleak on the same observation: ``inverting_gradients`` with breaching's settings
   (config ``ig-breaching-settings``), then every ``--gradleak-config``;
4. reports, per case and tool: seconds per iteration, final PSNR/SSIM (gradleak's metrics, after
   optimal matching), the wall time until the PSNR trajectory first reaches breaching's final
   PSNR, and breaching's time divided by each gradleak configuration's.

Results go to ``OUT/vs_breaching.json`` and ``OUT/vs_breaching.md``, rewritten after every tool of
every case; a rerun with the same settings skips what is done (add ``--gradleak-config``s later
and only those run). Case files go to ``OUT/runs/vs_breaching/<case>/``.

Full run (hours: breaching.md measured 0.2 s/iteration for ConvNet and 0.3 for ResNet-18 at
batch size 1 on 2 idle cores, per tool; keep the machine otherwise idle)::

    python benchmarks/vs_breaching.py --cases convnet-1,convnet-4,resnet18-1,resnet18-4 \\
        --iterations 2000 --threads 2 --snapshot-every 50 \\
        --breaching-python /work/venv-breaching/bin/python --out benchmarks/results

Extra gradleak configurations: ``--gradleak-config name:method:key=value,key=value`` (repeat
the flag, or separate configurations by ``;``), e.g.
``fast:inverting_gradients:optimizer=lbfgs,lr=1,iterations=100``. Keys ``iterations``,
``restarts`` and ``seed`` set the call; all others are the method's settings. Unless a
configuration sets them, ``iterations`` is ``--iterations``, ``restarts`` 1, and, for methods
that have them, ``tv`` is the matched TV weight below and ``labels`` is ``known``.

The breaching environment (outside the repository; see /work/shared/bench/breaching.md)::

    python -m venv /work/venv-breaching && P=/work/venv-breaching/bin/pip
    $P install torch==2.13.0 && $P install --no-deps "torchvision==0.28.*"
    $P install "numpy<2.3" pillow hydra-core lpips scipy safetensors
    $P install --no-deps breaching

Same objective
--------------
breaching's ``invertinggradients`` (config ``attack/invertinggradients.yaml``) minimizes, over
images ``z`` in its *normalized* space (``z = (x - m_c) / s_c``),

    [1 - <g(z), g*> / (|g(z)| |g*|)] * 1.0  +  scale * TV_b(z),     scale = 0.2 by default.

Its cosine (``CosineSimilarity._cosine_sim``) runs over the whole gradient vector, all parameter
tensors concatenated, no layer weights, scale 1: exactly gradleak's ``cosine`` distance (which
evaluates the same quantity as ``|g/|g| - g*/|g*||^2 / 2``). Its ``TotalVariation`` (inner and
outer exponent 1, eps 1e-8) convolves each channel with forward differences, zero padding 1, and
takes the mean of ``|dy| + |dx| + 2 eps`` over batch, channels and all H x W positions.

gradleak's objective is ``(1 - cos) + tv * TV_g(z)`` with ``TV_g`` on the same normalized input
``z`` (gradleak's pixels are parameterized in the model's normalized space, like breaching's): per
image, mean |dx| over C x H x (W-1) differences plus mean |dy| over C x (H-1) x W, averaged over
the batch. Over interior differences, for H = W,

    scale * TV_b(z) = scale * (W-1)/W * TV_g(z),

and the benchmark sets ``tv = scale * (W-1)/W``: 0.2 -> 0.19375 for 32x32 images (``--tv``
instead fixes gradleak's weight and derives breaching's scale). What remains different, and is
reported on a random probe image and on the true images: breaching's zero padding adds ``|z|`` of
the last row and column (a pull of the border towards the dataset mean); eps only shifts the
value. The cosine parts agree to 1e-7.
breaching's data normalization is set to gradleak's (its CIFAR-10 config has slightly different
constants).

Same settings, same parameterization
------------------------------------
Both run Adam on the sign of the image gradient, lr 0.1, step decay x0.1 (gradleak at
int(N*3/8), int(N*5/8), int(N*7/8); breaching at N // 2.667, N // 1.6, N // 1.142, i.e. within
one iteration), boxed, 1 restart, known labels, on the model's normalized input ``z`` (a step of
0.1 moves a pixel by 0.1 * s_c) from ``z ~ N(0, 1)`` projected to the valid box.

Trajectories: gradleak's ``Reconstruction.frames`` hold the best restart's best-so-far images
after steps 1, 1 + f, 1 + 2f, ... and the last (f = max(1, iterations // 60), see
``gradleak.attacks.matching``); times come from the attack's ``callback``. breaching's snapshots
(every ``--snapshot-every`` steps) hold its best-so-far candidate by the same rule; its last point
is the image ``reconstruct`` returned. Both clocks start right before the attack is called.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gradleak.attacks import get_attack
from gradleak.attacks import matching as gradleak_matching
from gradleak.attacks.objectives import GradientDistance
from gradleak.attacks.priors import total_variation
from gradleak.data import load_images, shared_data_dir
from gradleak.metrics import match_images, psnr, score_batch
from gradleak.models import build_model, model_info
from gradleak.report import environment, write_json
from gradleak.threat import observe

HERE = Path(__file__).resolve().parent
BREACHING_SIDE = HERE / "breaching_side.py"
BREACHING_TV_DEFAULT = 0.2  # breaching's attack/invertinggradients.yaml
MODELS = ("convnet", "resnet18")
DEFAULT_CASES = "convnet-1,convnet-4,resnet18-1,resnet18-4"
REFERENCE = "ig-breaching-settings"
BUSY_LOAD = 0.7  # 1-minute load average, measured while this benchmark itself idles


# ---------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class GradleakConfig:
    """One gradleak attack configuration: method, settings and call arguments."""

    name: str
    method: str
    settings: dict
    call: dict

    def spec(self) -> dict:
        return {"method": self.method, "settings": self.settings, "call": self.call}


def parse_value(text: str):
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


# breaching's invertinggradients in gradleak's terms (the step decay and the neutral settings of
# other priors are added where the installed gradleak has them: its engine evolves).
REFERENCE_SETTINGS = {
    "distance": "cosine",
    "optimizer": "adam",
    "lr": 0.1,
    "labels": "known",
    "init": "randn",
    "boxed": True,
    "signed": True,
    "layer_weights": None,
    "patience": None,
}
NEUTRAL_SETTINGS = {"l2": 0.0, "bn": 0.0, "group": 0.0, "warmup": 0}


def reference_settings(tv: float) -> dict:
    """gradleak ``inverting_gradients`` settings equal to breaching's, or SystemExit saying why."""
    fields = _setting_fields("inverting_gradients")
    settings = {**REFERENCE_SETTINGS, "tv": tv}
    missing = sorted(set(settings) - fields)
    if missing:
        raise SystemExit(f"gradleak's inverting_gradients lacks the settings {missing}")
    settings["schedule"] = "step"
    if "recipe" in fields:  # breaching's recipe, also on trained networks
        settings["recipe"] = "as-set"
    settings.update({k: v for k, v in NEUTRAL_SETTINGS.items() if k in fields})
    return settings


def parse_configs(texts: list[str], iterations: int, tv: float) -> list[GradleakConfig]:
    """The reference configuration plus ``name:method:key=value,...`` ones."""
    reference = GradleakConfig(
        REFERENCE,
        "inverting_gradients",
        reference_settings(tv),
        {"iterations": iterations, "restarts": 1},
    )
    configs = [reference]
    for text in texts:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            pieces = part.split(":", 2)
            if len(pieces) < 2 or not pieces[0] or not pieces[1]:
                raise SystemExit(f"--gradleak-config {part!r}: expected name:method:key=value,...")
            name, method = pieces[0], pieces[1]
            overrides = {}
            for item in filter(
                None, (p.strip() for p in (pieces[2] if len(pieces) > 2 else "").split(","))
            ):
                if "=" not in item:
                    raise SystemExit(f"--gradleak-config {part!r}: {item!r} is not key=value")
                key, value = item.split("=", 1)
                overrides[key.strip()] = parse_value(value)
            call = {"iterations": iterations, "restarts": 1}
            for key in ("iterations", "restarts", "seed"):
                if key in overrides:
                    call[key] = overrides.pop(key)
            fields = _setting_fields(method)
            settings = {k: v for k, v in (("tv", tv), ("labels", "known")) if k in fields}
            settings.update(overrides)
            if any(c.name == name for c in configs):
                raise SystemExit(f"--gradleak-config: name {name!r} used twice")
            configs.append(GradleakConfig(name, method, settings, call))
    return configs


def _setting_fields(method: str) -> set[str]:
    attack = get_attack(method)  # raises GradleakError for an unknown method
    return {f.name for f in dataclasses.fields(attack.settings)}


def tv_factor(std: list[float], image_size: int) -> float:
    """gradleak tv = breaching TV scale x this factor (see the module docstring)."""
    del std  # both tools apply TV to the normalized input
    return (image_size - 1) / image_size


def parse_case(case: str) -> tuple[str, int]:
    model, _, size = case.rpartition("-")
    if model not in MODELS or not size.isdigit() or int(size) < 1:
        raise SystemExit(f"case {case!r}: expected MODEL-BATCHSIZE with MODEL in {MODELS}")
    return model, int(size)


# ---------------------------------------------------------------------- environment
def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=HERE, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--", "src")
    return {"commit": git("rev-parse", "HEAD"), "src_modified": bool(status) if status else False}


def probe_breaching(python: str) -> dict:
    """Versions from breaching's environment, or precisely why it cannot run."""
    if not Path(python).exists():
        return {"ok": False, "reason": f"breaching's Python {python} does not exist"}
    try:
        done = subprocess.run(
            [python, str(BREACHING_SIDE), "--probe"], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.SubprocessError) as err:
        return {"ok": False, "reason": f"cannot start {python}: {err}"}
    if done.returncode != 0:
        output = done.stderr or done.stdout
        return {
            "ok": False,
            "reason": f"`{python} breaching_side.py --probe` exited with {done.returncode}: "
            + _tail(output, 1),
            "output_tail": _tail(output),
        }
    try:
        versions = json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"ok": False, "reason": f"unexpected probe output: {_tail(done.stdout)}"}
    return {"ok": True, "python": python, "versions": versions}


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# ---------------------------------------------------------------------- one case
def prepare_case(case: str, images, args, tv: float, scale: float, case_dir: Path):
    """Model, observation and the files breaching_side.py reads."""
    name, batch_size = parse_case(case)
    model = build_model(name, seed=args.seed)
    batch = images.select(batch_size, distinct_labels=True)
    run = {
        "iterations": args.iterations,
        "seed": args.seed,
        "snapshot_every": args.snapshot_every,
        "threads": args.threads,
    }
    return write_case(name, model, batch, args.bn_mode, run, tv, scale, case_dir)


def write_case(name: str, model, batch, bn_mode: str, run: dict, tv, scale, case_dir: Path):
    """Observe ``batch`` on ``model`` and write the files breaching_side.py reads; ``run`` holds
    breaching's iterations, seed, snapshot_every and threads."""
    batch_size = len(batch.labels)
    observation = observe(model, batch.images, batch.labels, bn_mode=bn_mode, ids=list(batch.ids))
    net = model.net
    parameter_names = [n for n, _ in net.named_parameters()]
    buffer_names = [n for n, _ in net.named_buffers()]
    case_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in observation.weights.items()},
        str(case_dir / "weights.safetensors"),
    )
    save_file(
        {n: observation.gradients[n].contiguous() for n in parameter_names},
        str(case_dir / "gradients.safetensors"),
    )
    save_file({"labels": observation.labels.contiguous()}, str(case_dir / "labels.safetensors"))
    probe = torch.rand(batch.images.shape, generator=torch.Generator().manual_seed(12345))
    reference = copy.deepcopy(model).train(bn_mode == "train")
    with torch.no_grad():
        logits = reference(batch.images)
    save_file(
        {"images": batch.images.contiguous(), "logits": logits, "probe_images": probe},
        str(case_dir / "check_images.safetensors"),
    )
    config = model.config
    settings = {
        "model": name,
        "width": config["width"],
        "num_classes": config["num_classes"],
        "in_channels": config["in_channels"],
        "image_size": config["image_size"],
        "mean": config["mean"],
        "std": config["std"],
        "bn_mode": observation.bn_mode,
        "iterations": run["iterations"],
        "restarts": 1,
        "seed": run["seed"],
        "tv_scale": scale,
        "snapshot_every": run["snapshot_every"],
        "threads": run["threads"],
        "parameter_names": parameter_names,
        "buffer_names": buffer_names,
    }
    (case_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    gradleak_objective = {
        "images": _gradleak_objective(model, observation, batch.images, bn_mode, tv),
        "probe_images": _gradleak_objective(model, observation, probe, bn_mode, tv),
    }
    info = {
        "model": name,
        "model_description": _description(name),
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch_size": batch_size,
        "image_ids": list(batch.ids),
        "labels": observation.labels.tolist(),
        "bn_mode": observation.bn_mode,
        "data_source": batch.source,
    }
    return model, observation, batch, info, gradleak_objective


def _description(name: str) -> str:
    return model_info(name)["description"]


def _gradleak_objective(model, observation, images, bn_mode, tv) -> dict:
    """gradleak's objective parts on ``images``: cosine distance to the observation, tv * TV."""
    names = list(observation.gradients)
    candidate = observe(model, images, observation.labels, bn_mode=bn_mode)
    distance = GradientDistance("cosine", [observation.gradients[n] for n in names])
    cosine = distance([candidate.gradients[n].unsqueeze(0) for n in names])
    return {
        "cosine": float(cosine[0]),
        "tv": tv * float(total_variation(((images - model.mean) / model.std).unsqueeze(0))[0]),
    }


def run_breaching(python: str, case_dir: Path, threads: int) -> dict:
    """breaching_side.py on ``case_dir``: its result, or an ``error`` saying why not."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.pop("PYTHONPATH", None)
    log = case_dir / "breaching.log"
    result_file = case_dir / "breaching" / "result.json"
    result_file.unlink(missing_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(
            [python, str(BREACHING_SIDE), str(case_dir)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=case_dir,
        )
    text = log.read_text()
    if done.returncode != 0 or not result_file.exists():
        check = [line for line in text.splitlines() if line.startswith("CHECK FAILED")]
        return {
            "error": f"breaching_side.py exited with {done.returncode}: "
            + (check[-1] if check else _tail(text)),
            "log": str(log),
        }
    return json.loads(result_file.read_text())


def breaching_entry(raw: dict, case_dir: Path, truth: torch.Tensor, truth_labels) -> dict:
    snapshots = load_file(str(case_dir / "breaching" / "snapshots.safetensors"))
    final = score_batch(snapshots["output"], truth, snapshots["labels"], truth_labels)
    mean, median = iteration_rates(raw["iteration_seconds"])
    iterations = list(raw["snapshot_iterations"])
    seconds = list(raw["snapshot_seconds"])
    psnrs = [batch_psnr(images, truth) for images in snapshots["best"]]
    current = [batch_psnr(images, truth) for images in snapshots["current"]]
    # The last point is what reconstruct() returned, when it returned it.
    iterations.append(raw["iterations"])
    seconds.append(raw["output_seconds"])
    psnrs.append(final.summary()["psnr"])
    return {
        "tool": "breaching",
        "iterations": raw["iterations"],
        "seconds_per_iteration": mean if mean is not None else raw["seconds_per_iteration"],
        "seconds_per_iteration_median": median,
        "total_seconds": raw["total_seconds"],
        **final.summary(),
        "trajectory": {"iterations": iterations, "seconds": seconds, "psnr": psnrs},
        "trajectory_current_psnr": current,
        "best_objective": raw.get("best_objective"),
        "versions": raw["versions"],
        "threads": raw["threads"],
        "bn_mode": raw["bn_mode"],
        "lr_milestones": raw["lr_milestones"],
        "attack_config": raw["attack_config"],
        "data_normalization": raw["data_normalization"],
        "measurement_overhead_seconds": raw["measurement_overhead_seconds"],
        "load_average_before": raw.get("load_average_before"),
    }


def run_gradleak(config: GradleakConfig, observation, truth, truth_labels, seed: int) -> dict:
    attack = get_attack(config.method, **config.settings)
    call = {"seed": seed, **config.call}
    times: dict[int, float] = {}

    def callback(done: int, total: int, distance: float) -> None:
        times[done] = time.perf_counter() - start

    start = time.perf_counter()
    reconstruction = attack(observation, callback=callback, **call)
    total = time.perf_counter() - start
    done = reconstruction.iterations or max(times, default=0)
    final = score_batch(reconstruction.images, truth, reconstruction.labels, truth_labels)
    per_iteration, median = iteration_rates([0.0] + [times[k] for k in sorted(times)])
    if per_iteration is None:
        per_iteration = median = times.get(done, total) / max(done, 1)
    entry = {
        "tool": "gradleak",
        "method": config.method,
        "spec": config.spec(),
        "iterations": done,
        "seconds_per_iteration": per_iteration,
        "seconds_per_iteration_median": median,
        "total_seconds": total,
        **final.summary(),
        "gradient_distance": reconstruction.gradient_distance,
        "settings": reconstruction.settings,
        "gradleak": git_state(),
    }
    requested = config.call.get("iterations") or reconstruction.iterations  # or the recipe's
    iterations, seconds, psnrs, note = _gradleak_trajectory(reconstruction, requested, times, truth)
    if iterations[-1:] != [done]:
        iterations.append(done)
        seconds.append(times.get(done, total))
        psnrs.append(entry["psnr"])
    entry["trajectory"] = {"iterations": iterations, "seconds": seconds, "psnr": psnrs}
    if note:
        entry["note"] = note
    return entry


def _gradleak_trajectory(reconstruction, requested: int, times: dict, truth):
    """Frame index -> iterations done, as ``GradientMatchingAttack.reconstruct`` takes them."""
    frames = reconstruction.frames
    if not frames:
        return [], [], [], None
    every = max(1, requested // getattr(gradleak_matching, "MAX_FRAMES", 60))
    dones = [
        it + 1 for it in range(reconstruction.iterations) if it % every == 0 or it + 1 == requested
    ]
    if len(dones) != len(frames) or any(d not in times for d in dones):
        note = (
            f"{len(frames)} frames do not fit the frame rule of gradleak.attacks.matching "
            f"({len(dones)} expected); trajectory reduced to the final image"
        )
        return [], [], [], note
    psnrs = [batch_psnr(frame, truth) for frame in frames]
    return dones, [times[d] for d in dones], psnrs, None


def iteration_rates(seconds: list[float]) -> tuple[float | None, float | None]:
    """Mean and median seconds per iteration from the times after 0, 1, 2, ... iterations; the
    mean leaves out the first iteration (warm-up), the median is robust to stalls."""
    steps = [b - a for a, b in zip(seconds[:-1], seconds[1:], strict=True)]
    if len(steps) < 2:
        return None, None
    return sum(steps[1:]) / len(steps[1:]), statistics.median(steps)


def batch_psnr(images: torch.Tensor, truth: torch.Tensor) -> float:
    order = match_images(images, truth)
    return float(psnr(images[order].clamp(0, 1), truth).mean())


# ---------------------------------------------------------------------- comparison
def time_to(trajectory: dict, threshold: float) -> float | None:
    for seconds, value in zip(trajectory["seconds"], trajectory["psnr"], strict=True):
        if value is not None and value >= threshold - 1e-9:
            return seconds
    return None


def compare(entry: dict) -> None:
    """Time-to-quality and ratios against breaching, derived from the stored trajectories."""
    entry["objective_check"] = _objective_check(entry)
    breaching = entry.get("breaching") or {}
    tools = dict(entry.get("gradleak", {}))
    if "psnr" not in breaching:
        for result in tools.values():
            if "error" not in result:
                for key in ("time_to_breaching_psnr", "speedup_vs_breaching"):
                    result[key] = None
                result["per_iteration_ratio"] = None
        return
    threshold = breaching["psnr"]
    breaching["time_to_breaching_psnr"] = time_to(breaching["trajectory"], threshold)
    for result in tools.values():
        if "trajectory" not in result:
            continue
        reached = time_to(result["trajectory"], threshold)
        result["time_to_breaching_psnr"] = reached
        own = breaching["time_to_breaching_psnr"]
        result["speedup_vs_breaching"] = own / reached if reached and own else None
        theirs = breaching.get("seconds_per_iteration_median")
        ours = result.get("seconds_per_iteration_median")
        result["per_iteration_ratio"] = theirs / ours if theirs and ours else None


def _objective_check(entry: dict) -> dict | None:
    ours = entry.get("gradleak_objective")
    theirs = (entry.get("checks") or {}).get
    if not ours or not theirs("objective_images"):
        return None
    out = {}
    for key in ("images", "probe_images"):
        b, g = theirs(f"objective_{key}"), ours[key]
        out[key] = {
            "cosine_breaching": b["cosine"],
            "cosine_gradleak": g["cosine"],
            "cosine_abs_difference": abs(b["cosine"] - g["cosine"]),
            "tv_breaching": b["tv"],
            "tv_gradleak": g["tv"],
            "tv_ratio_breaching_over_gradleak": b["tv"] / g["tv"] if g["tv"] else None,
        }
    return out


# ---------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    s = report["settings"]
    env = report["environment"]
    status = report["breaching"]
    lines = [
        "# gradleak vs breaching: Inverting Gradients on the same case",
        "",
        f"CIFAR-10 test images (lossless; first B with distinct labels), models at seed "
        f"{s['seed']}, BatchNorm {s['bn_mode']} mode, labels known, {s['iterations']} "
        f"iterations, 1 restart, {s['threads']} threads, {env['cpu_count']} CPUs, "
        f"{env['platform']}.",
        "",
        f"Same objective: cosine distance + TV with gradleak tv = {s['tv']:.6g} "
        f"and breaching TV scale = {s['breaching_tv_scale']:.6g} on normalized images "
        f"(factor {s['tv_factor']:.6g}; see the docstring of benchmarks/vs_breaching.py).",
        "",
    ]
    if status.get("ok"):
        v = status["versions"]
        lines.append(
            f"breaching {v['breaching']} (torch {v['torch']}, torchvision {v['torchvision']}); "
            f"gradleak {env['gradleak']} (torch {env['torch']})."
        )
    else:
        lines.append(f"**breaching could not be run:** {status.get('reason')}")
    lines += [
        "",
        "| case | tool / config | iterations | s / iteration (mean, median) | total s | PSNR "
        "| SSIM | s to breaching's PSNR | breaching time / this "
        "| breaching s/it / this (medians) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for case, entry in report["cases"].items():
        rows = [("breaching", entry.get("breaching") or {})]
        rows += list((entry.get("gradleak") or {}).items())
        for name, r in rows:
            if "error" in r:
                lines.append(f"| {case} | {name} | failed: {_cell(r['error'])} |" + " |" * 7)
                continue
            if not r:
                continue
            lines.append(
                f"| {case} | {name} | {r.get('iterations')} "
                f"| {_num(r.get('seconds_per_iteration'), 4)}, "
                f"{_num(r.get('seconds_per_iteration_median'), 4)} "
                f"| {_num(r.get('total_seconds'), 1)} | {_num(r.get('psnr'), 2)} "
                f"| {_num(r.get('ssim'), 4)} | {_num(r.get('time_to_breaching_psnr'), 1)} "
                f"| {_num(r.get('speedup_vs_breaching'), 2)} "
                f"| {_num(r.get('per_iteration_ratio'), 2)} |"
            )
        loads = [
            f"{name} {r['load_average_before'][0]:.1f}"
            for name, r in rows
            if r.get("load_average_before") and r["load_average_before"][0] > BUSY_LOAD
        ]
        if loads:
            notes.append(
                f"- {case}: **machine busy** (1-minute load average before the run: "
                f"{', '.join(loads)}); timings are not comparable to an idle machine's"
            )
        checks = entry.get("checks") or {}
        objective = entry.get("objective_check") or {}
        if checks:
            probe = objective.get("probe_images", {})
            notes.append(
                f"- {case}: {entry['info']['parameters']:,} parameters; gradient relative "
                f"error {_num(checks.get('gradient_relative_error'), 2, 'e')}, logits "
                f"{_num(checks.get('forward_relative_error'), 2, 'e')}; objective on a random "
                f"probe: cosine {_num(probe.get('cosine_gradleak'), 6)} (gradleak) vs "
                f"{_num(probe.get('cosine_breaching'), 6)} (breaching), TV term ratio "
                f"breaching/gradleak {_num(probe.get('tv_ratio_breaching_over_gradleak'), 4)} "
                f"(true images: "
                f"{_num(objective.get('images', {}).get('tv_ratio_breaching_over_gradleak'), 4)})"
            )
    lines += [
        "",
        "PSNR/SSIM: gradleak's metrics after optimal matching, mean over the batch. "
        "'s to breaching's PSNR': wall time until the tool's best-so-far images first reach "
        "breaching's final PSNR (empty: never). Ratios above 1 favour the configuration. "
        f"`{REFERENCE}` uses breaching's settings; both tools optimize the model's normalized "
        "input (a signed-Adam step of 0.1 moves a pixel by 0.1 x std).",
        "",
        "Checks (breaching's model on gradleak's weights, true images) and notes:",
        "",
        *notes,
        "",
    ]
    return "\n".join(lines)


def _num(value, digits: int, kind: str = "f") -> str:
    return "" if value is None else f"{value:.{digits}{kind}}"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")[:300]


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="MODEL-BATCHSIZE, comma-separated")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--snapshot-every", type=int, default=50)
    parser.add_argument("--breaching-python", default="/work/venv-breaching/bin/python")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--gradleak-configs",
        "--gradleak-config",
        dest="gradleak_configs",
        action="append",
        default=[],
        help="name:method:key=value,...; repeat or separate by ';'",
    )
    parser.add_argument(
        "--tv",
        type=float,
        default=None,
        help="gradleak's TV weight; default: the equivalent of breaching's scale",
    )
    parser.add_argument("--breaching-tv-scale", type=float, default=BREACHING_TV_DEFAULT)
    parser.add_argument("--bn-mode", choices=("train", "eval"), default="train")
    parser.add_argument("--seed", type=int, default=0, help="model and attack seed")
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.iterations < 1 or args.snapshot_every < 1 or args.threads < 1:
        parser.error("--iterations, --snapshot-every and --threads must be positive")
    torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        parse_case(case)

    std, size = model_info(MODELS[0])["std"], model_info(MODELS[0])["image_size"]
    for name in MODELS:  # one factor for all cases: they share the normalization
        if model_info(name)["std"] != std:
            raise SystemExit(f"{name} has another normalization than {MODELS[0]}")
    factor = tv_factor(std, size)
    if args.tv is None:
        scale, tv = args.breaching_tv_scale, args.breaching_tv_scale * factor
    else:
        scale, tv = args.tv / factor, args.tv
    configs = parse_configs(args.gradleak_configs, args.iterations, tv)

    settings = {
        "iterations": args.iterations,
        "threads": args.threads,
        "snapshot_every": args.snapshot_every,
        "seed": args.seed,
        "bn_mode": args.bn_mode,
        "tv": tv,
        "breaching_tv_scale": scale,
        "tv_factor": factor,
        "images": "cifar10 test, lossless, first B with distinct labels",
    }
    json_path, md_path = args.out / "vs_breaching.json", args.out / "vs_breaching.md"
    report = {"benchmark": "vs_breaching", "settings": settings, "cases": {}}
    if json_path.exists():
        try:
            old = json.loads(json_path.read_text())
        except (json.JSONDecodeError, OSError):
            old = {}
        if old.get("settings") == settings:
            report["cases"] = old.get("cases", {})
        else:
            print(f"{json_path} has other settings: starting afresh", flush=True)
    report["environment"] = environment()
    report["gradleak_git"] = git_state()
    report["shared_data"] = str(shared_data_dir(required=False))
    report["breaching"] = probe_breaching(args.breaching_python)
    if not report["breaching"]["ok"]:
        print(f"breaching cannot be run: {report['breaching']['reason']}", file=sys.stderr)

    def save() -> None:
        for entry in report["cases"].values():
            compare(entry)
        write_json(json_path, report)
        md_path.write_text(markdown(report))

    images = load_images("cifar10", n=20)
    for case in cases:
        entry = report["cases"].setdefault(case, {})
        case_dir = args.out / "runs" / "vs_breaching" / case
        pending_breaching = "psnr" not in (entry.get("breaching") or {})
        pending = [
            c
            for c in configs
            if (entry.get("gradleak") or {}).get(c.name, {}).get("spec") != _jsonable(c.spec())
            or "error" in entry["gradleak"][c.name]
        ]
        if not pending_breaching and not pending:
            print(f"{case}: done already", flush=True)
            continue
        model, observation, batch, info, objective = prepare_case(
            case, images, args, tv, scale, case_dir
        )
        entry["info"] = info
        entry["gradleak_objective"] = objective
        truth, truth_labels = batch.images, batch.labels
        if pending_breaching:
            if report["breaching"]["ok"]:
                print(f"{case}: breaching ...", flush=True)
                load = os.getloadavg()
                raw = run_breaching(args.breaching_python, case_dir, args.threads)
                if "error" in raw:
                    entry["breaching"] = raw
                    print(f"{case}: breaching failed: {raw['error']}", file=sys.stderr)
                else:
                    raw["load_average_before"] = list(load)
                    entry["checks"] = {
                        k: v for k, v in raw["checks"].items() if k != "parameter_mapping"
                    }
                    entry["checks"]["parameter_mapping_first"] = raw["checks"]["parameter_mapping"][
                        :3
                    ]
                    entry["breaching"] = breaching_entry(raw, case_dir, truth, truth_labels)
            else:
                entry["breaching"] = {"error": report["breaching"]["reason"]}
            save()
            _print_row(case, "breaching", entry["breaching"])
        entry.setdefault("gradleak", {})
        for config in pending:
            print(f"{case}: gradleak {config.name} ...", flush=True)
            load = os.getloadavg()
            try:
                result = run_gradleak(config, observation, truth, truth_labels, args.seed)
                result["load_average_before"] = list(load)
            except Exception as err:  # one configuration failing must not lose the others
                result = {"spec": _jsonable(config.spec()), "error": f"{type(err).__name__}: {err}"}
            entry["gradleak"][config.name] = result
            save()
            _print_row(case, config.name, result)
        del model
    save()
    print(f"wrote {json_path} and {md_path}", flush=True)


def _jsonable(value):
    return json.loads(json.dumps(value))


def _print_row(case: str, name: str, result: dict) -> None:
    if "error" in result:
        print(f"{case} / {name}: FAILED {result['error']}", flush=True)
        return
    print(
        f"{case} / {name}: {result['iterations']} it, {result['seconds_per_iteration']:.4f} "
        f"s/it, {result['total_seconds']:.1f} s, PSNR {result['psnr']:.2f}, "
        f"SSIM {result['ssim']:.4f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
