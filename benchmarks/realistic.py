"""Benchmark (optional, not in CI): trained networks, breaching's full budget against gradleak.

The realistic case of gradient inversion: a *trained* network (He et al.'s CIFAR ResNet-20,
91.8 % top-1, the shared pretrained weights; BatchNorm in eval mode, the server sends its
buffers), held-out CIFAR-10 test images (JPEG copies, within-class index >= 500; everything
below 500 is the attacker's auxiliary data), labels known.

Two phases, both resumable (a case or configuration that is done is skipped on a rerun):

``reference``
    breaching 0.1.2's Inverting Gradients at its default budget, 24,000 signed-Adam steps, on
    every case, run by ``breaching_side.py`` in breaching's own environment on the same weights
    (its logits and gradient on the true images are checked against gradleak's). Each case's
    trajectory (best-so-far PSNR every ``--snapshot-every`` steps, wall seconds) is kept in
    ``OUT/runs/realistic/<case>/breaching/``. Several processes may run disjoint ``--cases``.

``compare``
    gradleak's configurations on the same observations, then the headline figures
    (``OUT/realistic.json`` and ``OUT/realistic.md``)::

        python benchmarks/realistic.py reference --cases r20-1a,r20-1b,r20-4a --threads 1
        python benchmarks/realistic.py reference --cases r20-1c,r20-1d,r20-4b --threads 1
        python benchmarks/realistic.py compare --threads 1

(The stored results ran the four batch-1 cases only; the Markdown names the exact command.)
The inverter files are cached in ``OUT/runs/realistic/`` (trained once, wall time recorded).

Cases are ``r20-<B><letter>``: batch size B, the letter seeds the held-out draw.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vs_breaching as vb  # noqa: E402  (the case files and breaching's side are shared)

from gradleak.data import ImageSet, load_images, shared_data_dir  # noqa: E402
from gradleak.models import build_model  # noqa: E402
from gradleak.report import environment, write_json  # noqa: E402
from gradleak.threat import observe  # noqa: E402

DATA = "cifar10/test_jpeg_q75.npz"
HELD_OUT_FROM = 500  # within-class index: below it, the attacker's auxiliary images
MODEL = "resnet20"
CASES = ("r20-1a", "r20-1b", "r20-1c", "r20-1d", "r20-4a", "r20-4b")
BREACHING_ITERATIONS = 24_000  # breaching's attack/invertinggradients.yaml default
BN_MODE = "eval"
HEADLINE = "ig-breaching-tenth"  # gradleak's trained-network default for inverting_gradients
AUX_BELOW = 450  # the inverters train on within-class index < 450; 450..499 tuned the recipe
TIMING_STEPS = 100  # breaching's side-by-side timing run on every case


@dataclasses.dataclass(frozen=True)
class Config(vb.GradleakConfig):
    """A gradleak configuration of the comparison: ``lever`` is what it changes against
    breaching's recipe; ``batch`` restricts it to one batch size (None: all);
    ``inverter`` names the artifact it needs (batch-size range), if any."""

    lever: str = ""
    batch: int | None = None
    inverter: tuple[int, int] | None = None


def parse_case(case: str) -> tuple[int, int]:
    """``r20-<B><letter>`` -> (batch size, draw index)."""
    prefix, _, rest = case.partition("-")
    if prefix != "r20" or len(rest) < 2 or not rest[:-1].isdigit() or not rest[-1].isalpha():
        raise SystemExit(f"case {case!r}: expected r20-<batch size><letter>, e.g. r20-1a")
    return int(rest[:-1]), ord(rest[-1].lower()) - ord("a")


def held_out_images() -> tuple[ImageSet, torch.Tensor]:
    """The shared JPEG CIFAR-10 test copies and the mask of held-out ones."""
    path = shared_data_dir() / DATA
    within = np.load(path, allow_pickle=False)["within_class_index"]
    return load_images(path), torch.as_tensor(within >= HELD_OUT_FROM)


def case_batch(case: str, images: ImageSet, held_out: torch.Tensor) -> ImageSet:
    """A random batch of held-out images, drawn by the case's letter and batch size."""
    batch_size, draw = parse_case(case)
    pool = torch.nonzero(held_out).flatten()
    generator = torch.Generator().manual_seed(1_000 * batch_size + draw)
    index = pool[torch.randperm(len(pool), generator=generator)[:batch_size]]
    return images.subset(index)


def trained_model():
    return build_model(MODEL, weights="pretrained")


def breaching_tv() -> tuple[float, float]:
    """breaching's TV scale (its default) and gradleak's equivalent weight."""
    scale = vb.BREACHING_TV_DEFAULT
    return scale, scale * vb.tv_factor([], 32)


def reference(args) -> None:
    """breaching's 24,000-step run on each case, skipping those already done."""
    images, held_out = held_out_images()
    scale, tv = breaching_tv()
    probe = vb.probe_breaching(args.breaching_python)
    if not probe["ok"]:
        raise SystemExit(f"breaching cannot be run: {probe['reason']}")
    run = {
        "iterations": args.iterations,
        "seed": 0,
        "snapshot_every": args.snapshot_every,
        "threads": args.threads,
    }
    for case in args.cases:
        case_dir = args.out / "runs" / "realistic" / case
        done = case_dir / "breaching" / "result.json"
        if done.exists():
            settings = json.loads(done.read_text())["settings"]
            if settings["iterations"] == args.iterations:
                print(f"{case}: breaching done already", flush=True)
                continue
        batch = case_batch(case, images, held_out)
        vb.write_case(MODEL, trained_model(), batch, BN_MODE, run, tv, scale, case_dir)
        print(f"{case}: breaching, {args.iterations} steps, images {batch.ids} ...", flush=True)
        load = os.getloadavg()
        raw = vb.run_breaching(args.breaching_python, case_dir, args.threads)
        if "error" in raw:
            print(f"{case}: breaching failed: {raw['error']}", file=sys.stderr, flush=True)
            continue
        raw["load_average_before"] = list(load)
        done.write_text(json.dumps(raw, indent=2) + "\n")
        print(
            f"{case}: breaching {raw['total_seconds']:.0f} s, "
            f"{raw['seconds_per_iteration']:.4f} s/step",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("reference", "compare"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--iterations", type=int, default=BREACHING_ITERATIONS)
    parser.add_argument("--snapshot-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--breaching-python", default="/work/venv-breaching/bin/python")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--skip", default="", help="gradleak configurations to leave out")
    args = parser.parse_args()
    args.skip = {c.strip() for c in args.skip.split(",") if c.strip()}
    args.out = args.out.resolve()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in args.cases:
        parse_case(case)
    torch.set_num_threads(args.threads)
    if args.phase == "reference":
        reference(args)
    else:
        compare(args)


def compare(args) -> None:
    """gradleak's configurations on every case whose reference is done, then the figures."""
    images, held_out = held_out_images()
    json_path, md_path = args.out / "realistic.json", args.out / "realistic.md"
    report = {"benchmark": "realistic", "cases": {}}
    if json_path.exists():
        try:
            report["cases"] = json.loads(json_path.read_text()).get("cases", {})
        except (json.JSONDecodeError, OSError):
            print(f"{json_path} does not parse: starting afresh", flush=True)
    report["environment"] = environment()
    report["gradleak_git"] = vb.git_state()
    configs = gradleak_configs(args)

    def save() -> None:
        summarize(report, configs, args)
        write_json(json_path, report)
        md_path.write_text(markdown(report))

    model = trained_model()
    report.setdefault("artifacts", {})
    batches = {parse_case(case)[0] for case in args.cases}
    needed = {c.inverter for c in configs if c.inverter and c.batch in batches}
    for sizes in sorted(needed - {c.inverter for c in configs if c.name in args.skip}):
        report["artifacts"][f"b{sizes[0]}-{sizes[1]}"] = ensure_inverter(
            args, sizes, model, images, held_out
        )
    for case in args.cases:
        case_dir = args.out / "runs" / "realistic" / case
        done = case_dir / "breaching" / "result.json"
        if not done.exists():
            print(f"{case}: no breaching reference yet (run the reference phase)", flush=True)
            continue
        entry = report["cases"].setdefault(case, {})
        batch = case_batch(case, images, held_out)
        raw = json.loads(done.read_text())
        entry["info"] = {"image_ids": list(batch.ids), "labels": batch.labels.tolist()}
        entry["breaching"] = vb.breaching_entry(raw, case_dir, batch.images, batch.labels)
        entry["breaching"]["load_average_before"] = raw.get("load_average_before")
        observation = observe(model, batch.images, batch.labels, bn_mode=BN_MODE)
        if "breaching_s_per_step" not in entry.get("timing", {}):
            entry["timing"] = side_by_side_timing(args, case_dir, observation, batch)
            save()
        entry.setdefault("gradleak", {})
        for config in configs:
            if config.name in args.skip or (config.batch and config.batch != len(batch.labels)):
                continue
            old = entry["gradleak"].get(config.name, {})
            if old.get("spec") == vb._jsonable(config.spec()) and "error" not in old:
                continue
            print(f"{case}: gradleak {config.name} ...", flush=True)
            load = os.getloadavg()
            try:
                result = vb.run_gradleak(config, observation, batch.images, batch.labels, 0)
                result["load_average_before"] = list(load)
            except Exception as err:  # one configuration failing must not lose the others
                error = f"{type(err).__name__}: {err}"
                result = {"spec": vb._jsonable(config.spec()), "error": error}
            entry["gradleak"][config.name] = result
            save()
            vb._print_row(case, config.name, result)
    save()
    print(f"wrote {json_path} and {md_path}", flush=True)


def side_by_side_timing(args, case_dir: Path, observation, batch) -> dict:
    """breaching's and gradleak's seconds per IG step now, on this case (TIMING_STEPS each):
    the reference ran for 40 minutes per case beside other jobs, so its wall times are rescaled
    to the comparison's load by breaching's step time measured here."""
    timing_dir = case_dir / "timing"
    timing_dir.mkdir(exist_ok=True)
    for name in ("weights", "gradients", "labels", "check_images"):
        target = timing_dir / f"{name}.safetensors"
        if not target.exists():
            target.write_bytes((case_dir / f"{name}.safetensors").read_bytes())
    settings = json.loads((case_dir / "settings.json").read_text())
    settings.update(iterations=TIMING_STEPS, snapshot_every=TIMING_STEPS)
    (timing_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    raw = vb.run_breaching(args.breaching_python, timing_dir, args.threads)
    if "error" in raw:
        raise SystemExit(f"breaching's timing run failed: {raw['error']}")
    _, breaching_median = vb.iteration_rates(raw["iteration_seconds"])
    scale, tv = breaching_tv()
    config = vb.GradleakConfig(
        "ig-timing", "inverting_gradients", vb.reference_settings(tv),
        {"iterations": TIMING_STEPS, "restarts": 1},
    )  # fmt: skip
    ours = vb.run_gradleak(config, observation, batch.images, batch.labels, 0)
    return {
        "steps": TIMING_STEPS,
        "breaching_s_per_step": breaching_median,
        "gradleak_s_per_step": ours["seconds_per_iteration_median"],
        "load_average": list(os.getloadavg()),
    }


def inverter_path(args, sizes: tuple[int, int]) -> Path:
    return args.out / "runs" / "realistic" / f"inverter-b{sizes[0]}-{sizes[1]}.safetensors"


def ensure_inverter(args, sizes: tuple[int, int], model, images: ImageSet, held_out) -> dict:
    """The inverter for batch sizes ``sizes`` (trained once on the auxiliary images, within-class
    index < AUX_BELOW; cached): its card's training figures."""
    from gradleak.learned.training import train_inverter

    path = inverter_path(args, sizes)
    card_path = path.with_name(path.name + ".json")
    timing_path = path.with_name(path.stem + ".wall.json")
    if not path.exists():
        start = time.perf_counter()
        within = torch.as_tensor(
            np.load(shared_data_dir() / DATA, allow_pickle=False)["within_class_index"]
        )
        aux = images.subset(within < AUX_BELOW)
        print(f"training the inverter for batch sizes {sizes} on {len(aux)} images ...", flush=True)
        train_inverter(
            model, aux, out=path, steps=INVERTER_STEPS, batch_sizes=sizes, seed=0,
            private=images.subset(held_out),
        )  # fmt: skip
        wall = {"wall_seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}
        timing_path.write_text(json.dumps(wall) + "\n")
    card = json.loads(card_path.read_text())
    wall = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    return {
        "path": str(path),
        "batch_sizes": list(sizes),
        "wall_seconds": wall.get("wall_seconds"),
        "train_seconds": card["seconds"],
        "aux_images": card["aux"]["size"],
        "held_out_psnr": card.get("held_out_scores", {}).get("psnr"),
        "threads": card["versions"].get("torch_threads"),
    }


INVERTER_STEPS = 3000


def gradleak_configs(args) -> list[Config]:
    """breaching's recipe at a tenth of its budget, gradleak's trained-network defaults (the
    recipe: ``learned`` with its inverter; ``inverting_gradients`` without an artifact) and
    each lever alone."""
    _, tv = breaching_tv()
    reference = vb.reference_settings(tv)
    tenth = BREACHING_ITERATIONS // 10

    def learned(sizes, **settings) -> dict:
        return {"inverter": str(inverter_path(args, sizes)), "labels": "known", **settings}

    configs = [
        Config(HEADLINE, "inverting_gradients", reference,
               {"iterations": tenth, "restarts": 1},
               lever="schedule: breaching's recipe over 2,400 steps (= inverting_gradients' "
                     "trained-network default, TV matched to breaching's)"),
        Config("gray-300", "inverting_gradients",
               {"labels": "known", "tv": tv, "init": "gray", "recipe": "as-set"},
               {"iterations": 300, "restarts": 1},
               lever="initialization: gray start, 300 steps (no artifact)"),
    ]  # fmt: skip
    for batch, sizes in ((1, (1, 1)), (4, (1, 4))):
        configs += [
            Config(f"inverter-b{batch}", "learned", learned(sizes),
                   {"restarts": 1},
                   lever="learned inverter alone (learned's trained-network default)",
                   batch=batch, inverter=sizes),
            Config(f"inverter+ig-b{batch}", "learned",
                   learned(sizes, refine="ig", tv=tv),
                   {"iterations": 300, "restarts": 1},
                   lever="inverter, then 300 IG steps (refinement)",
                   batch=batch, inverter=sizes),
        ]  # fmt: skip
    return configs


# ---------------------------------------------------------------------- figures
def _at_time(trajectory: dict, seconds: float, scale: float) -> float | None:
    """Best-so-far PSNR of a trajectory at ``seconds`` (its times multiplied by ``scale``)."""
    value = None
    for t, v in zip(trajectory["seconds"], trajectory["psnr"], strict=True):
        if t * scale <= seconds:
            value = v
    return value


def case_figures(entry: dict) -> None:
    """Per configuration: time to breaching's final PSNR, the speed-up, the PSNR gain at equal
    time. breaching's times are rescaled to the load of the comparison (``timing``)."""
    b = entry.get("breaching") or {}
    if "psnr" not in b:
        return
    timing = entry.get("timing") or {}
    scale = (
        timing.get("breaching_s_per_step", b["seconds_per_iteration"]) / b["seconds_per_iteration"]
    )
    final = b["psnr"]
    b_total = b["total_seconds"] * scale
    b_first = vb.time_to(b["trajectory"], final)
    entry["breaching_figures"] = {
        "time_scale": scale,
        "total_seconds_rescaled": b_total,
        "first_reached_final_seconds_rescaled": None if b_first is None else b_first * scale,
    }
    for r in (entry.get("gradleak") or {}).values():
        if "trajectory" not in r:
            continue
        reached = vb.time_to(r["trajectory"], final)
        at_equal = _at_time(b["trajectory"], r["total_seconds"], scale)
        r["figures"] = {
            "time_to_breaching_final": reached,
            "time_to_quality_ratio": b_total / reached if reached else None,
            "time_to_quality_ratio_strict": (
                b_first * scale / reached if reached and b_first is not None else None
            ),
            "breaching_psnr_at_equal_time": at_equal,
            "psnr_gain_equal_time_db": None if at_equal is None else r["psnr"] - at_equal,
            "psnr_gain_vs_breaching_final_db": r["psnr"] - final,
        }


def summarize(report: dict, configs: list[Config], args) -> None:
    """Headline figures of the recipe over all cases, and one row per lever."""
    for entry in report["cases"].values():
        case_figures(entry)
    cases = {k: v for k, v in report["cases"].items() if "figures" in str(v.get("gradleak"))}
    artifacts = report.get("artifacts", {})
    rows = {}
    for config in configs:
        group = config.name.rsplit("-b", 1)[0] if config.batch else config.name
        found = [
            (case, e["gradleak"][config.name])
            for case, e in cases.items()
            if "figures" in e["gradleak"].get(config.name, {})
        ]
        row = rows.setdefault(group, {"lever": config.lever, "cases": {}})
        for case, r in found:
            f = dict(r["figures"])
            if config.inverter:
                art = artifacts.get(f"b{config.inverter[0]}-{config.inverter[1]}", {})
                served = sum(1 for c in cases if parse_case(c)[0] <= config.inverter[1]) or 1
                amortized = art.get("wall_seconds", 0.0) / served
                reached = f["time_to_breaching_final"]
                total = report["cases"][case]["breaching_figures"]["total_seconds_rescaled"]
                f["artifact_seconds_amortized"] = amortized
                f["time_to_quality_ratio_with_artifact"] = (
                    total / (reached + amortized) if reached else None
                )
            row["cases"][case] = {
                "psnr": r["psnr"], "ssim": r["ssim"], "seconds": r["total_seconds"],
                "seconds_per_iteration": r.get("seconds_per_iteration_median"), **f,
            }  # fmt: skip
    for row in rows.values():
        values = list(row["cases"].values())
        for key in (
            "time_to_quality_ratio", "time_to_quality_ratio_strict",
            "time_to_quality_ratio_with_artifact", "psnr_gain_equal_time_db",
            "psnr_gain_vs_breaching_final_db", "psnr", "seconds",
        ):  # fmt: skip
            present = [v.get(key) for v in values if v.get(key) is not None]
            if key.startswith("time_to_quality_ratio") and present:
                # a case that never reached breaching's final PSNR counts as ratio 0
                present += [0.0] * (len(values) - len(present))
            row[f"median_{key}"] = statistics.median(present) if present else None
            row[f"min_{key}"] = min(present) if present else None
        row["reached"] = sum(v.get("time_to_breaching_final") is not None for v in values)
        row["n_cases"] = len(values)
    report["levers"] = rows
    recipe = rows.get(HEADLINE, {})
    parity = read_parity(args)
    report["time_to_quality_ratio"] = recipe.get("median_time_to_quality_ratio")
    report["psnr_gain_equal_time_db"] = recipe.get("median_psnr_gain_equal_time_db")
    report["step_ratio"] = parity.get("step_ratio")
    report["headline_definitions"] = {
        "recipe": f"{HEADLINE}: breaching's Inverting Gradients recipe over 2,400 steps, "
        "gradleak's inverting_gradients default on a trained network (no artifact)",
        "time_to_quality_ratio": "median over cases of breaching's 24,000-step wall time / "
        "the recipe's wall time until its best-so-far PSNR reaches breaching's final PSNR (0 for "
        "a case where it never does) "
        "(inverter training excluded; with it amortized: time_to_quality_ratio_with_artifact)",
        "psnr_gain_equal_time_db": "median over cases of the recipe's final PSNR minus "
        "breaching's best-so-far PSNR after the same wall time",
        "step_ratio": "gradleak / breaching median seconds per Inverting Gradients step, same "
        "case, same settings, 1 thread (benchmarks/results/parity/vs_breaching.json)",
    }
    report["parity"] = parity


def read_parity(args) -> dict:
    path = args.out / "parity" / "vs_breaching.json"
    if not path.exists():
        return {}
    cases = json.loads(path.read_text()).get("cases", {})
    ratios, detail = {}, {}
    for case, entry in cases.items():
        b = (entry.get("breaching") or {}).get("seconds_per_iteration_median")
        g = ((entry.get("gradleak") or {}).get(vb.REFERENCE) or {}).get(
            "seconds_per_iteration_median"
        )
        if b and g:
            model = case.rpartition("-")[0]
            ratios[model] = g / b
            detail[case] = {"breaching": b, "gradleak": g, "ratio": g / b}
    return {"step_ratio": ratios, "cases": detail, "source": str(path)}


# ---------------------------------------------------------------------- report
COMMAND = (
    "python benchmarks/realistic.py reference --cases r20-1a,r20-1b & "
    "python benchmarks/realistic.py reference --cases r20-1c,r20-1d; "
    "python benchmarks/vs_breaching.py --cases convnet-1,resnet18-1 --iterations 100 "
    "--threads 1 --snapshot-every 50 --out benchmarks/results/parity; "
    "python benchmarks/realistic.py compare --cases r20-1a,r20-1b,r20-1c,r20-1d --threads 1"
)


def _f(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Trained networks: breaching's full budget against gradleak",
        "",
        f"`{COMMAND}`",
        "",
        "Trained CIFAR ResNet-20 (shared pretrained weights, 91.8 % top-1), BatchNorm in eval "
        "mode, labels known, held-out CIFAR-10 test images (JPEG copies, within-class index "
        f">= {HELD_OUT_FROM}); the inverters train on within-class index < {AUX_BELOW}. "
        f"breaching {BREACHING_ITERATIONS:,} steps of its Inverting Gradients (its defaults; TV "
        f"scale 0.2). 1 thread per tool, {env['cpu_count']} CPUs, torch {env['torch']}.",
        "",
        "## Headline",
        "",
        f"- time-to-quality ratio (breaching / gradleak, median over cases): "
        f"**{_f(report.get('time_to_quality_ratio'), 1)}x** (target >= 10x)",
        f"- PSNR gain at equal wall time (median): "
        f"**{_f(report.get('psnr_gain_equal_time_db'))} dB** (target >= +2 dB)",
        "- seconds per step, gradleak / breaching: "
        + ", ".join(f"{k} **{v:.3f}x**" for k, v in (report.get("step_ratio") or {}).items())
        + " (target <= 1.0x)",
        "",
        "Definitions: "
        + "; ".join(f"`{k}`: {v}" for k, v in report.get("headline_definitions", {}).items()),
        "",
        "## Levers, each alone (medians over the cases it ran on)",
        "",
        "| configuration | lever | cases | reached breaching's final | PSNR | s | time ratio "
        "| with artifact | strict ratio | gain at equal time (dB) | gain vs breaching final (dB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (report.get("levers") or {}).items():
        lines.append(
            f"| {name} | {row['lever']} | {row['n_cases']} | {row['reached']} "
            f"| {_f(row['median_psnr'])} | {_f(row['median_seconds'], 1)} "
            f"| {_f(row['median_time_to_quality_ratio'], 1)} "
            f"| {_f(row['median_time_to_quality_ratio_with_artifact'], 1)} "
            f"| {_f(row['median_time_to_quality_ratio_strict'], 1)} "
            f"| {_f(row['median_psnr_gain_equal_time_db'])} "
            f"| {_f(row['median_psnr_gain_vs_breaching_final_db'])} |"
        )
    lines += [
        "",
        "## Per case",
        "",
        "| case | images | breaching final PSNR | breaching s (24k steps, rescaled) "
        "| breaching s/step now | gradleak IG s/step now | best configuration here |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, entry in report["cases"].items():
        b, t = entry.get("breaching") or {}, entry.get("timing") or {}
        figures = entry.get("breaching_figures") or {}
        done = {k: v for k, v in (entry.get("gradleak") or {}).items() if v.get("psnr") is not None}
        best = max(done, key=lambda k: done[k]["psnr"], default=None)
        lines.append(
            f"| {case} | {len(entry['info']['image_ids'])} | {_f(b.get('psnr'))} "
            f"| {_f(figures.get('total_seconds_rescaled'), 0)} "
            f"| {_f(t.get('breaching_s_per_step'), 4)} | {_f(t.get('gradleak_s_per_step'), 4)} "
            f"| {best} ({_f(done[best]['psnr']) if best else ''} dB) |"
        )
    lines += ["", "## Artifacts", ""]
    for name, art in (report.get("artifacts") or {}).items():
        lines.append(
            f"- inverter {name}: {art['aux_images']} auxiliary images, "
            f"{_f(art.get('wall_seconds'), 0)} s to train (hashing + fitting, "
            f"{art.get('threads')} thread), held-out PSNR {_f(art.get('held_out_psnr'))} dB"
        )
    parity = report.get("parity") or {}
    if parity.get("cases"):
        lines += ["", "## Per-step parity (Inverting Gradients step, same case)", ""]
        for case, d in parity["cases"].items():
            lines.append(
                f"- {case}: breaching {d['breaching']:.4f} s, gradleak {d['gradleak']:.4f} s "
                f"(ratio {d['ratio']:.3f})"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
