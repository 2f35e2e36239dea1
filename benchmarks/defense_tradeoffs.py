"""Benchmark (optional, not in CI): what each defense leaks against what it costs in accuracy.

LeNet (seed 0) on CIFAR-10: the private images are the shared lossless ``test_first20`` set
(``cifar10`` images spec, the first ``--n-images``), attacked one at a time (batch 1, labels
hidden from the server). Per defense setting, the attacks run through the experiments framework
(a :class:`gradleak.experiments.Grid` with ``defenses=``, :func:`run_experiment`, resumable under
``OUT/runs/defense_tradeoffs/<part>``) and the accuracy comes from
:func:`gradleak.experiments.utility.defense_accuracy`: LeNet trained for ``--train-steps`` plain
FedSGD steps of batch 32 on the auxiliary CIFAR-10 images (without near-copies of the private
ones), tested on 1,000 held-out images, each step the same defended client step the attacks
observe (resumable in ``OUT/runs/defense_tradeoffs/utility.json``).

Parts (``--parts``; each writes ``OUT/defense_tradeoffs.{json,md,png}`` when done, and a rerun
with the same settings keeps the parts already there):

- ``none``: no defense.
- ``dp``: DP-SGD (Opacus) with per-sample clipping C = ``--dp-clip`` and the noise multipliers
  that spend epsilon 1, 2, 4, 8, 16 at delta 1e-5 over the whole training (sample rate 32 / N,
  ``--train-steps`` steps; :func:`gradleak.defenses.dp.noise_for_epsilon`), and eps = inf
  (clipping only). The attacked step is one batch-1 step of the same mechanism. Target: at
  epsilon <= 8 no attack beats the mean-image baseline.
- ``soteria``: Soteria pruning 60 % (the official README's CIFAR-10 setting), 30 % and 90 % of
  the representation layer's gradient; besides Inverting Gradients / iDLG on LeNet, the bias
  attack on ``mlp4`` (it reads the first layer, Soteria defends the last) and R-GAP on
  ``rgap_cnn``. Soteria's accuracy is measured only with ``--soteria-train-steps`` > 0 (its
  criterion takes one backward pass per representation feature and image: 768 x 32 per step).
- ``prune``: top-k keep 0.5 / 0.3 / 0.1 / 0.01 (keep 1.0 is ``none``), also with the bias attack
  (``mlp4``) and R-GAP (``rgap_cnn``).
- ``quantize``: 8, 4, 2 bits (QSGD) and the scaled sign; ``mixing``: MixUp and InstaHide, k = 4
  (the partners are the other private images).

Example (what produced ``benchmarks/results/defense_tradeoffs.md``)::

    OMP_NUM_THREADS=1 python benchmarks/defense_tradeoffs.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from gradleak.defenses import DEFENSES
from gradleak.experiments import Experiment, Grid, RunOptions, build, run_experiment
from gradleak.experiments.grid import grid_cases
from gradleak.experiments.spec import AttackSpec, DefenseSpec, ImagesSpec, ModelSpec, as_items
from gradleak.experiments.utility import UtilityBudget, UtilityStore, accounted, utility_split
from gradleak.records import environment, write_json

HERE = Path(__file__).resolve().parent
EPSILONS = (1.0, 2.0, 4.0, 8.0, 16.0)
DELTA = 1e-5
BASELINE = "mean_image"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="none,dp,soteria,prune,quantize,mixing")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--analytic-images", type=int, default=2, help="images for R-GAP")
    parser.add_argument("--ig-iterations", type=int, default=200)
    parser.add_argument("--idlg-iterations", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=600)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--soteria-train-steps", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "defense_tradeoffs.json"
    results = _read(path)
    results.update(
        command=" ".join(["OMP_NUM_THREADS=1" if args.threads == 1 else "", "python", *sys.argv]),
        threads=args.threads,
        environment=environment(),
    )
    bench = Bench(args)
    results["budget"] = bench.settings
    for part in args.parts.split(","):
        settings = {**bench.settings, "part": part}
        if results.get("parts", {}).get(part, {}).get("settings") == settings:
            print(f"{part}: done before, kept", flush=True)
            continue
        missing = [d for d in PART_DEFENSES.get(part, ()) if d not in DEFENSES]
        if missing:
            print(f"{part}: defense(s) {missing} not registered, skipped", flush=True)
            continue
        print(f"{part}: running", flush=True)
        start = time.perf_counter()
        rows = bench.part(part)
        results.setdefault("parts", {})[part] = {
            "settings": settings,
            "rows": rows,
            "seconds": time.perf_counter() - start,
        }
        write_json(path, results)
        (args.out / "defense_tradeoffs.md").write_text(markdown(results))
        plot(results, args.out / "defense_tradeoffs.png")
    write_json(path, results)
    (args.out / "defense_tradeoffs.md").write_text(markdown(results))
    plot(results, args.out / "defense_tradeoffs.png")
    print(markdown(results))


PART_DEFENSES = {
    "dp": ("dp",),
    "soteria": ("soteria",),
    "prune": ("prune",),
    "quantize": ("quantize",),
    "mixing": ("mixup", "instahide"),
}


class Bench:
    """The benchmark's fixed pieces: data, model, budgets, the utility store."""

    def __init__(self, args):
        self.args = args
        self.runs = args.out / "runs" / "defense_tradeoffs"
        self.train, self.test = utility_split("cifar10", n_test=args.test_images, seed=0)
        self.budget = UtilityBudget(
            steps=args.train_steps, batch_size=32, lr=0.05, optimizer="sgd", seed=0
        )
        self.store = UtilityStore(self.runs / "utility.json")
        self.settings = {
            "n_images": args.n_images,
            "analytic_images": args.analytic_images,
            "ig_iterations": args.ig_iterations,
            "idlg_iterations": args.idlg_iterations,
            "utility": dataclasses.asdict(self.budget),
            "train_images": len(self.train),
            "test_images": len(self.test),
            "dp_clip": args.dp_clip,
            "soteria_train_steps": args.soteria_train_steps,
        }
        self.sample_rate = self.budget.batch_size / len(self.train)

    # ------------------------------------------------------------------ settings
    def defenses(self, part: str) -> list[tuple[str, tuple[DefenseSpec, ...]]]:
        """``(setting label, defenses)`` of a part."""
        if part == "none":
            return [("none", ())]
        if part == "dp":
            from gradleak.defenses.dp import noise_for_epsilon

            out = []
            for eps in (*EPSILONS, math.inf):
                sigma = 0.0 if eps == math.inf else noise_for_epsilon(
                    eps, self.sample_rate, self.budget.steps, DELTA
                )  # fmt: skip
                params = {"max_grad_norm": self.args.dp_clip, "noise_multiplier": round(sigma, 4),
                          "delta": DELTA}  # fmt: skip
                out.append((f"eps={eps:g}", self._spec("dp", params)))
            return out
        if part == "soteria":
            return [(f"prune={p:g}", self._spec("soteria", {"prune": p})) for p in (0.6, 0.3, 0.9)]
        if part == "prune":
            return [
                (f"keep={k:g}", self._spec("prune", {"keep": k})) for k in (0.5, 0.3, 0.1, 0.01)
            ]
        if part == "quantize":
            out = [(f"{b} bits", self._spec("quantize", {"bits": b})) for b in (8, 4, 2)]
            return [*out, ("sign", self._spec("quantize", {"mode": "sign"}))]
        if part == "mixing":
            return [("mixup k=4", self._spec("mixup", {"k": 4})),
                    ("instahide k=4", self._spec("instahide", {"k": 4}))]  # fmt: skip
        raise SystemExit(f"unknown part {part!r}")

    def _spec(self, name: str, params: dict) -> tuple[DefenseSpec, ...]:
        """One defense with the training's accounting filled in (DP's sample rate and steps),
        so that the attacked step and the trained model report the same epsilon."""
        ((name, params),) = accounted([(name, params)], self.budget, len(self.train))
        return (DefenseSpec(name, as_items(params)),)

    # ------------------------------------------------------------------ running
    def part(self, part: str) -> list[dict]:
        settings = self.defenses(part)
        lenet = self.attacks(part, "lenet", self.lenet_methods(), settings, self.args.n_images)
        extra: dict[str, dict] = {}
        if part in ("none", "soteria", "prune"):
            extra["mlp4"] = self.attacks(part, "mlp4", (AttackSpec("bias", "bias"),), settings,
                                         self.args.n_images)  # fmt: skip
            extra["rgap_cnn"] = self.attacks(
                part, "rgap_cnn", (AttackSpec("rgap", "rgap"),), settings, self.args.analytic_images
            )
        rows = []
        for label, defenses in settings:
            row = {"defense": part, "setting": label, "defenses": _plain(defenses)}
            row["attacks"] = lenet[label]
            for model, found in extra.items():
                for variant, scores in found[label].items():
                    row["attacks"][f"{variant} ({model})"] = scores
            row.update(self.utility(part, defenses))
            row["baseline_psnr"] = (row["attacks"].get(BASELINE) or {}).get("psnr_median")
            best = _best(row["attacks"], "lenet")
            row["best_attack"], row["best_psnr"] = best
            if row["baseline_psnr"] is not None and best[1] is not None:
                row["best_minus_baseline"] = best[1] - row["baseline_psnr"]
            rows.append(row)
            print(part, label, f"acc {_f(row.get('accuracy'), 3)}",
                  f"best {best[0]} {_f(best[1], 2)} dB", f"eps {_f(row.get('epsilon'), 2)}",
                  flush=True)  # fmt: skip
        return rows

    def lenet_methods(self) -> tuple[AttackSpec, ...]:
        return (
            AttackSpec("inverting_gradients", "inverting_gradients",
                       iterations=self.args.ig_iterations),
            AttackSpec("idlg", "idlg", iterations=self.args.idlg_iterations),
            AttackSpec(BASELINE, BASELINE),
        )  # fmt: skip

    def attacks(self, part, model, methods, settings, n_images) -> dict[str, dict[str, dict]]:
        """Per setting label, per attack variant: median PSNR / SSIM, mean label accuracy."""
        grid = Grid(
            "cifar10",
            (ModelSpec(model, seed=0),),
            methods,
            defenses=tuple(d for _, d in settings),
            n_images=n_images,
            knows_labels=False,
            name=part,
        )
        experiment = Experiment(f"defense_tradeoffs-{part}-{model}", "", grid, grid_cases)
        results = run_experiment(
            experiment, self.runs / f"{part}-{model}", RunOptions(threads=self.args.threads)
        )
        by_label = {" + ".join(d.label for d in defenses) or "none": label
                    for label, defenses in settings}  # fmt: skip
        out: dict[str, dict[str, dict]] = {label: {} for label, _ in settings}
        for record in results["cases"]:
            label = by_label[record["defense"]]
            out[label].setdefault(record["variant"], []).append(record)
        return {label: {v: _scores(rs) for v, rs in found.items()} for label, found in out.items()}

    def utility(self, part: str, defenses: tuple[DefenseSpec, ...]) -> dict:
        budget = self.budget
        if part == "soteria":
            if not self.args.soteria_train_steps:
                return {"accuracy": None, "utility_note": "not measured (--soteria-train-steps)"}
            budget = dataclasses.replace(budget, steps=self.args.soteria_train_steps)
        private = ImagesSpec("cifar10", first=self.args.n_images)  # as the grid builds it
        model = build.model(ModelSpec("lenet", seed=0), private)
        found = self.store.accuracy(
            model, self.train, self.test, [(d.name, dict(d.params)) for d in defenses], budget
        )
        return {
            "accuracy": found["accuracy"],
            "epsilon": found.get("epsilon"),
            "train_seconds": found["seconds"],
            "train_steps": found["steps"],
            "nonfinite_steps": found["nonfinite_steps"],
        }


# ---------------------------------------------------------------------- summaries
def _scores(records: list[dict]) -> dict:
    done = [r for r in records if r.get("status", "done") == "done"]
    psnr = [r["psnr"] for r in done if isinstance(r.get("psnr"), int | float)]
    ssim = [r["ssim"] for r in done if isinstance(r.get("ssim"), int | float)]
    labels = [r["label_accuracy"] for r in done if isinstance(r.get("label_accuracy"), float)]
    return {
        "n": len(records),
        "n_done": len(done),
        "psnr_median": statistics.median(psnr) if psnr else None,
        "ssim_median": statistics.median(ssim) if ssim else None,
        "label_accuracy": statistics.fmean(labels) if labels else None,
        "psnr": psnr,
        "errors": sorted({r.get("error") or "" for r in records if r not in done}),
    }


def _best(attacks: dict, model: str) -> tuple[str | None, float | None]:
    """The LeNet attack (not the baseline) with the highest median PSNR."""
    scored = [(v["psnr_median"], k) for k, v in attacks.items()
              if k != BASELINE and "(" not in k and v.get("psnr_median") is not None]  # fmt: skip
    if not scored:
        return None, None
    psnr, name = max(scored)
    return name, psnr


def _plain(defenses) -> list:
    return [[d.name, dict(d.params)] for d in defenses]


def _read(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _f(value, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------------- report
ORDER = ("none", "dp", "soteria", "prune", "quantize", "mixing")
ATTACKS = ("inverting_gradients", "idlg", "bias (mlp4)", "rgap (rgap_cnn)", BASELINE)


def markdown(results: dict) -> str:
    env = results.get("environment", {})
    budget = results.get("budget", {})
    utility = budget.get("utility", {})
    lines = [
        "# Defenses: leakage vs accuracy (LeNet, CIFAR-10)",
        "",
        f"`{results.get('command', '').strip()}`",
        "",
        f"torch {env.get('torch')}, gradleak {env.get('gradleak')}, {env.get('platform')}, "
        f"{results.get('threads')} thread(s); the machine's 2 cores were shared with other jobs.",
        "",
        "Budgets: private images = the first "
        f"{budget.get('n_images')} shared lossless CIFAR-10 test images, batch 1, labels hidden "
        f"(recovered by each attack); Inverting Gradients {budget.get('ig_iterations')} "
        f"iterations, iDLG {budget.get('idlg_iterations')} L-BFGS iterations, R-GAP on "
        f"{budget.get('analytic_images')} images. Accuracy: LeNet (seed 0) trained for "
        f"{utility.get('steps')} FedSGD steps of batch {utility.get('batch_size')} "
        f"({utility.get('optimizer')}, lr {utility.get('lr')}, seed {utility.get('seed')}) on "
        f"{budget.get('train_images')} auxiliary CIFAR-10 images (the shared JPEG copies of the "
        f"test split without the private images), every step the defended client step, tested on "
        f"{budget.get('test_images')} held-out images (chance 0.10). PSNR / SSIM: medians over "
        "the images after optimal matching; label acc.: mean. DP: per-sample clip C = "
        f"{budget.get('dp_clip')}, delta 1e-5, epsilon of the whole training (the attacked "
        "batch-1 step is one step of the same mechanism).",
        "",
        "| defense | setting | epsilon | accuracy | "
        + " | ".join(f"{a} PSNR / SSIM / label acc." for a in ATTACKS)
        + " | best LeNet attack - baseline (dB) |",
        "|---|---|---|---|" + "---|" * len(ATTACKS) + "---|",
    ]
    parts = results.get("parts", {})
    for part in ORDER:
        for row in parts.get(part, {}).get("rows", []):
            cells = []
            for attack in ATTACKS:
                s = row["attacks"].get(attack)
                cells.append(
                    ""
                    if s is None
                    else f"{_f(s['psnr_median'], 2)} / "
                    f"{_f(s['ssim_median'], 3)} / {_f(s['label_accuracy'], 2)}"
                )
            eps = row.get("epsilon")
            lines.append(
                f"| {part} | {row['setting']} | {_f(eps, 2) if part == 'dp' else ''} | "
                f"{_f(row.get('accuracy'), 3)} | " + " | ".join(cells) + " | "
                f"{_f(row.get('best_minus_baseline'), 2)} |"
            )
    failed = [
        f"- {part} {row['setting']}, {attack}: {'; '.join(e for e in s['errors'] if e)}"
        for part in ORDER
        for row in parts.get(part, {}).get("rows", [])
        for attack, s in row["attacks"].items()
        if any(s.get("errors") or [])
    ]
    if failed:
        lines += ["", "Cases not scored (n/a above):", "", *failed]
    lines += ["", *verdicts(parts), ""]
    seconds = {p: parts[p]["seconds"] for p in ORDER if p in parts}
    lines.append("Wall time per part (s): " + ", ".join(f"{p} {s:.0f}" for p, s in seconds.items())
                 + f"; total {sum(seconds.values()):.0f} s.")  # fmt: skip
    return "\n".join(lines) + "\n"


def verdicts(parts: dict) -> list[str]:
    """The targets, measured."""
    out = ["## Against the targets", ""]
    dp = parts.get("dp", {}).get("rows", [])
    if dp:
        small = [r for r in dp if r.get("epsilon") is not None and r["epsilon"] <= 8]
        beaten = [r for r in small if (r.get("best_minus_baseline") or 0) > 0]
        gaps = ", ".join(f"eps {_f(r['epsilon'], 2)}: {_f(r.get('best_minus_baseline'), 2)} dB"
                         for r in dp)  # fmt: skip
        out.append(
            f"- DP, best attack minus mean-image baseline: {gaps}. At epsilon <= 8 "
            + ("no attack beats the baseline." if not beaten else
               f"{len(beaten)} setting(s) beat it: "
               + ", ".join(r["setting"] for r in beaten) + ".")
        )  # fmt: skip
    none = parts.get("none", {}).get("rows", [])
    clean = none[0] if none else None
    for part, title in (("soteria", "Soteria"), ("prune", "Pruning")):
        rows = parts.get(part, {}).get("rows", [])
        if not rows:
            continue
        text = []
        for r in ([clean] if clean else []) + rows:
            a = r["attacks"]
            text.append(
                f"{r['setting']}: IG {_f(_get(a, 'inverting_gradients'), 1)}, iDLG "
                f"{_f(_get(a, 'idlg'), 1)}, bias/mlp4 {_f(_get(a, 'bias (mlp4)'), 1)}, "
                f"R-GAP {_f(_get(a, 'rgap (rgap_cnn)'), 1)} dB, acc {_f(r.get('accuracy'), 3)}"
            )
        out.append(f"- {title} (PSNR medians): " + "; ".join(text) + ".")
    return out


def _get(attacks: dict, name: str):
    return (attacks.get(name) or {}).get("psnr_median")


def plot(results: dict, path: Path) -> None:
    """Best LeNet attack's PSNR against accuracy, one marker per setting; the DP curve with its
    epsilons; the mean-image baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = results.get("parts", {})
    figure, axis = plt.subplots(figsize=(7.5, 5))
    markers = {"none": "*", "dp": "o", "soteria": "P", "prune": "s", "quantize": "^",
               "mixing": "D"}  # fmt: skip
    baselines = []
    for part in ORDER:
        rows = [r for r in parts.get(part, {}).get("rows", [])
                if r.get("accuracy") is not None and r.get("best_psnr") is not None]  # fmt: skip
        baselines += [r["baseline_psnr"] for r in parts.get(part, {}).get("rows", [])
                      if r.get("baseline_psnr") is not None]  # fmt: skip
        if not rows:
            continue
        x = [r["accuracy"] for r in rows]
        y = [min(r["best_psnr"], 60.0) for r in rows]
        style = "-" if part == "dp" else ""
        axis.plot(x, y, style + markers[part], label=part, markersize=9 if part == "none" else 6)
        for r, xi, yi in zip(rows, x, y, strict=True):
            eps = r.get("epsilon")  # None: no noise (clipping only), epsilon infinite
            text = r["setting"]
            if part == "dp":
                text = f"ε={_f(eps, 1)}" if eps is not None else "ε=∞"
            if part != "none":
                axis.annotate(text, (xi, yi), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")  # fmt: skip
    if baselines:
        axis.axhline(statistics.median(baselines), ls="--", color="gray",
                     label="mean-image baseline")  # fmt: skip
    axis.set_xlabel("test accuracy of LeNet trained with the defense")
    axis.set_ylabel("best attack's median PSNR (dB; capped at 60)")
    axis.set_title("Leakage vs utility (LeNet, CIFAR-10, batch 1); up-right = leaks and learns")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
