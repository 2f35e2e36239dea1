"""The audit's ``report.html``: one self-contained page (images, GIFs and plots embedded as data
URIs, no script or style from elsewhere) that a person reads without gradleak.

It says, per defense, how much leaks (the best attack's reconstruction beside the truth, its
PSNR and SSIM, the labels recovered, the batch size inferred) against the no-information
baseline, what the defense costs in accuracy, the leakage-vs-utility plot, and the settings and
versions of the run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from pathlib import Path

import torch

from gradleak.errors import GradleakError

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.7rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f3f5f7}.leaks{color:#a40e26;font-weight:600}.stopped{color:#1a7f37;font-weight:600}
.muted{color:#57606a;font-size:.9rem}img{image-rendering:pixelated;max-width:100%}
.defense{border:1px solid #d0d7de;border-radius:6px;padding:.4rem 1rem 1rem;margin:1rem 0}
pre{background:#f6f8fa;padding:.7rem;overflow-x:auto;font-size:.85rem}
.pics{display:flex;gap:1.5rem;flex-wrap:wrap;align-items:flex-start}
"""

# Marks the page once every image has loaded (headless checks read it from the DOM).
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var all = Array.prototype.slice.call(document.images);
  var ok = all.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  document.documentElement.setAttribute("data-images-loaded", ok.length + "/" + all.length);
});
</script>"""


def write_audit_report(out: Path, audit, grid, results: dict, accuracy: dict) -> Path:
    """Write ``out/report.html`` for an audit's results (see the module docstring)."""
    from gradleak.experiments.audit import BASELINES, BATCH_SIZE_VARIANT, LABELS_VARIANT
    from gradleak.experiments.grid import grid_cases

    out = Path(out)
    cases = {case.id: case for case in grid_cases(grid)}
    records = [r for r in results.get("cases", []) if r.get("id") in cases]
    if not records:
        raise GradleakError(f"{out} holds no finished case of this audit to report on")
    labels = [" + ".join(d.label for d in ds) or "none" for ds in grid.defenses]
    verdicts = []
    for label in labels:
        mine = [r for r in records if r.get("defense") == label]
        attacks = [r for r in mine if r.get("variant") not in (LABELS_VARIANT, BATCH_SIZE_VARIANT)]
        verdicts.append(
            _verdict(
                label,
                attacks,
                [r for r in mine if r.get("variant") == LABELS_VARIANT],
                [r for r in mine if r.get("variant") == BATCH_SIZE_VARIANT],
                accuracy.get(label),
                accuracy.get("none"),
                audit.margin_db,
                BASELINES,
                cases,
                out,
            )
        )
    body = [
        f"<h1>gradleak audit: {_e(audit.title)}</h1>",
        f"<p class=muted>{_e(_setup_line(grid, records, cases))}</p>",
        "<h2>Verdict per defense</h2>",
        _verdict_table(verdicts, audit.margin_db),
        _tradeoff_figure(verdicts),
        "<h2>What each defense lets through</h2>",
        *(_defense_section(v) for v in verdicts),
        "<h2>Every attack, every defense</h2>",
        _summary_table(verdicts),
        "<h2>Settings and versions</h2>",
        _settings(audit, grid, results, accuracy),
    ]
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>gradleak audit: {_e(audit.title)}</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}{CHECK_SCRIPT}</body></html>"
    )
    path = out / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a report
    return path


# ---------------------------------------------------------------------- per defense
def _verdict(
    label, attacks, label_runs, size_runs, utility, clean, margin, baselines, cases, out
) -> dict:
    by_variant: dict[str, list[dict]] = {}
    for record in attacks:
        by_variant.setdefault(record["variant"], []).append(record)
    rows = []
    for variant, runs in by_variant.items():
        done = [r for r in runs if r.get("status") == "done" and _number(r.get("psnr"))]
        reasons = sorted({r.get("error") or r.get("status") for r in runs if r not in done})
        rows.append(
            {
                "variant": variant,
                "attack": runs[0].get("attack"),
                "psnr": _median(r["psnr"] for r in done),
                "ssim": _median(r.get("ssim") for r in done),
                "label_accuracy": _median(r.get("label_accuracy") for r in done),
                "done": done,
                "not_run": reasons,
            }
        )
    reference = next(
        (r for name in baselines for r in rows if r["attack"] == name and r["psnr"] is not None),
        None,
    )
    baseline = reference["psnr"] if reference else _gray_psnr(attacks, cases)
    contenders = [r for r in rows if r is not reference and r["psnr"] is not None]
    best = max(contenders, key=lambda r: r["psnr"], default=None)
    leaks = best is not None and baseline is not None and best["psnr"] > baseline + margin
    verdict = {
        "defense": label,
        "rows": rows,
        "best": best,
        "baseline": baseline,
        "baseline_name": reference["variant"] if reference else "gray 0.5 (computed)",
        "leaks": leaks,
        "labels": _mean(r.get("label_accuracy") for r in label_runs),
        "batch_sizes": [
            (r.get("estimate"), len(r.get("images") or [])) for r in size_runs if "estimate" in r
        ],
        "accuracy": (utility or {}).get("accuracy"),
        "accuracy_drop": (
            None
            if not utility or not clean
            else float(clean["accuracy"]) - float(utility["accuracy"])
        ),
        "facts": _defense_facts(attacks, cases),
        "training_epsilon": (utility or {}).get("epsilon"),
    }
    verdict["pictures"] = _pictures(best, cases, out) if best else {}
    return verdict


def _defense_facts(records: list[dict], cases: dict) -> list[dict]:
    """The observed step's defense records (e.g. DP's epsilon), from one of its cases."""
    from gradleak.experiments import build

    for record in records:
        case = cases.get(record["id"])
        if case is None:
            continue
        try:
            observation, _ = build.observation(case.observation, case.seed)
        except GradleakError:
            return []
        return list(observation.defense.get("applied", []))
    return []


def _gray_psnr(records: list[dict], cases: dict) -> float | None:
    """PSNR of flat gray images against the private images (when no baseline attack ran)."""
    from gradleak.experiments import build
    from gradleak.metrics import psnr

    values = []
    seen = set()
    for record in records:
        case = cases.get(record["id"])
        if case is None or case.observation in seen:
            continue
        seen.add(case.observation)
        truth = build.truth(case.observation)
        if truth is not None:
            values += psnr(torch.full_like(truth, 0.5), truth).tolist()
    return statistics.median(values) if values else None


def _pictures(best: dict, cases: dict, out: Path) -> dict:
    """The truth above the best attack's reconstructions (PNG) and its best case's GIF."""
    from gradleak.attacks import load_reconstruction
    from gradleak.experiments import build
    from gradleak.report.figures import image_grid

    truths, recs = [], []
    for record in best["done"]:
        files = record.get("files") or {}
        case = cases.get(record["id"])
        if "reconstruction" not in files or case is None:
            continue
        truth = build.truth(case.observation)
        if truth is None:
            continue
        reconstruction = load_reconstruction(out / files["reconstruction"])
        order = record.get("order") or list(range(len(reconstruction.images)))
        truths.append(truth)
        recs.append(reconstruction.images[order])
    pictures = {}
    if truths and all(t.shape[1:] == truths[0].shape[1:] for t in truths):
        grid = image_grid([torch.cat(truths), torch.cat(recs)], scale=3)
        pictures["grid"] = _png_uri(grid)
    top = max(best["done"], key=lambda r: r["psnr"])
    gif = (top.get("files") or {}).get("progress")
    if gif and (out / gif).is_file():
        pictures["gif"] = "data:image/gif;base64," + base64.b64encode(
            (out / gif).read_bytes()
        ).decode("ascii")
        pictures["gif_psnr"] = top["psnr"]
    return pictures


# ---------------------------------------------------------------------- page parts
def _verdict_table(verdicts: list[dict], margin: float) -> str:
    head = (
        "<table><tr><th>defense</th><th>verdict</th><th>best attack</th><th>PSNR (dB)</th>"
        "<th>SSIM</th><th>baseline PSNR</th><th>labels recovered</th>"
        "<th>batch size inferred</th><th>test accuracy</th><th>privacy facts</th></tr>"
    )
    rows = []
    for v in verdicts:
        best = v["best"] or {}
        word = (
            "<span class=leaks>leaks</span>"
            if v["leaks"]
            else "<span class=stopped>stopped</span>"
            if best
            else "no attack ran"
        )
        rows.append(
            "<tr>"
            f"<td>{_e(v['defense'])}</td><td>{word}</td>"
            f"<td>{_e(best.get('variant', '-'))}</td><td>{_f(best.get('psnr'), 1)}</td>"
            f"<td>{_f(best.get('ssim'), 3)}</td><td>{_f(v['baseline'], 1)}</td>"
            f"<td>{_percent(v['labels'])}</td><td>{_e(_sizes(v['batch_sizes']))}</td>"
            f"<td>{_accuracy(v)}</td><td>{_e(_facts(v))}</td></tr>"
        )
    note = (
        f"<p class=muted>A defense <b>stops</b> the attacks when no attack's median PSNR beats "
        f"the no-information baseline (an image that reads nothing from the update) by more "
        f"than {margin:g} dB. PSNR and SSIM are medians over the private images after optimal "
        "matching; labels recovered: accuracy of the labels read off the update; test "
        "accuracy: the model trained with the defense at the stated budget (its drop from no "
        "defense in brackets).</p>"
    )
    return head + "".join(rows) + "</table>" + note


def _tradeoff_figure(verdicts: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [v for v in verdicts if v["best"] is not None]
    if not points:
        return ""
    have_accuracy = all(v["accuracy"] is not None for v in points)
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for i, v in enumerate(points):
        x = 100 * v["accuracy"] if have_accuracy else i
        color = "#a40e26" if v["leaks"] else "#1a7f37"
        axis.plot(x, v["best"]["psnr"], "o", color=color, markersize=7)
        axis.annotate(
            v["defense"], (x, v["best"]["psnr"]), fontsize=7, xytext=(4, 4),
            textcoords="offset points",
        )  # fmt: skip
    baselines = [v["baseline"] for v in points if v["baseline"] is not None]
    if baselines:
        axis.axhline(statistics.median(baselines), ls="--", color="#57606a", lw=1)
        axis.text(
            axis.get_xlim()[0], statistics.median(baselines), " no-information baseline",
            va="bottom", fontsize=7, color="#57606a",
        )  # fmt: skip
    axis.set_ylabel("best attack's median PSNR (dB)")
    if have_accuracy:
        axis.set_xlabel("test accuracy of the model trained with the defense (%)")
    else:
        axis.set_xticks(range(len(points)), [v["defense"] for v in points], rotation=30)
    axis.set_title("Leakage vs utility: up = more leaks, right = more accurate", fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<p><img alt='leakage vs utility plot' src='{uri}'></p>"


def _defense_section(v: dict) -> str:
    best = v["best"]
    parts = [f"<div class=defense><h3>{_e(v['defense'])}</h3>"]
    if best is None:
        reasons = "; ".join(r for row in v["rows"] for r in row["not_run"]) or "no case finished"
        return parts[0] + f"<p>No attack produced a reconstruction: {_e(reasons)}</p></div>"
    pictures = v["pictures"]
    verdict = (
        f"<span class=leaks>Leaks</span>: {_e(best['variant'])} reconstructs the private images "
        f"at {_f(best['psnr'], 1)} dB PSNR, {_f(v['baseline'], 1)} dB for the baseline "
        f"({_e(v['baseline_name'])})."
        if v["leaks"]
        else f"<span class=stopped>Stopped</span>: the best attack ({_e(best['variant'])}, "
        f"{_f(best['psnr'], 1)} dB) does not beat the baseline ({_f(v['baseline'], 1)} dB) "
        "by the margin."
    )
    parts.append(f"<p>{verdict}</p><div class=pics>")
    if "grid" in pictures:
        parts.append(
            "<figure><img alt='truth (top) and best reconstruction (bottom)' "
            f"src='{pictures['grid']}'><figcaption class=muted>top: the client's private "
            f"images; bottom: {_e(best['variant'])}'s reconstructions</figcaption></figure>"
        )
    if "gif" in pictures:
        parts.append(
            f"<figure><img alt='optimization of the best case' src='{pictures['gif']}'>"
            f"<figcaption class=muted>the best case's optimization "
            f"({_f(pictures['gif_psnr'], 1)} dB)</figcaption></figure>"
        )
    parts.append("</div>")
    skipped = [(row["variant"], r) for row in v["rows"] for r in row["not_run"]]
    if skipped:
        items = "".join(f"<li>{_e(name)}: {_e(reason)}</li>" for name, reason in skipped)
        parts.append(f"<p class=muted>Not run or failed:</p><ul class=muted>{items}</ul>")
    return "".join(parts) + "</div>"


def _summary_table(verdicts: list[dict]) -> str:
    rows = [
        "<table><tr><th>defense</th><th>attack</th><th>PSNR (dB)</th><th>SSIM</th>"
        "<th>label accuracy</th><th>cases</th></tr>"
    ]
    for v in verdicts:
        for row in v["rows"]:
            rows.append(
                f"<tr><td>{_e(v['defense'])}</td><td>{_e(row['variant'])}</td>"
                f"<td>{_f(row['psnr'], 1)}</td><td>{_f(row['ssim'], 3)}</td>"
                f"<td>{_percent(row['label_accuracy'])}</td>"
                f"<td>{len(row['done'])} done"
                f"{', ' + str(len(row['not_run'])) + ' other' if row['not_run'] else ''}</td></tr>"
            )
    return "".join(rows) + "</table>"


def _settings(audit, grid, results: dict, accuracy: dict) -> str:
    import dataclasses

    from gradleak.records import json_safe

    utility = dataclasses.asdict(audit.utility)
    budgets = next((v.get("budget") for v in accuracy.values() if isinstance(v, dict)), None)
    return (
        "<p>The audit file:</p>"
        f"<pre>{_e(audit.source)}</pre>"
        f"<p>Utility measurement:</p><pre>{_e(json.dumps(json_safe(utility), indent=1))}</pre>"
        + (
            f"<p>Its training budget:</p><pre>{_e(json.dumps(json_safe(budgets), indent=1))}</pre>"
            if budgets
            else ""
        )
        + f"<p>The grid that ran:</p><pre>{_e(json.dumps(results.get('settings'), indent=1))}"
        "</pre>"
        f"<p>Versions:</p><pre>{_e(json.dumps(results.get('versions'), indent=1))}</pre>"
    )


def _setup_line(grid, records: list[dict], cases: dict) -> str:
    from gradleak.experiments import build

    observation = None
    for record in records:
        case = cases.get(record["id"])
        if case is not None:
            try:
                observation, _ = build.observation(case.observation, case.seed)
            except GradleakError:
                continue
            break
    models = ", ".join(m.name + (f" ({m.weights} weights)" if m.weights else "") for m in
                       grid.models)  # fmt: skip
    seen = observation.describe() if observation is not None else "(no observation)"
    knows = [
        "labels" if grid.knows_labels else None,
        "batch size" if grid.knows_batch_size else None,
    ]
    known = ", ".join(k for k in knows if k) or "neither labels nor batch size"
    return (
        f"Model {models}; private images {grid.data} ({grid.image_size}x{grid.image_size}); "
        f"the server sees {seen}; it knows: {known}; seeds {list(grid.seeds)}."
    )


# ---------------------------------------------------------------------- formatting
def _png_uri(array) -> str:
    import imageio.v3 as iio

    data = iio.imwrite("<bytes>", array, extension=".png")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value) -> bool:
    return isinstance(value, int | float) and value == value


def _median(values) -> float | None:
    kept = [float(v) for v in values if _number(v)]
    return statistics.median(kept) if kept else None


def _mean(values) -> float | None:
    kept = [float(v) for v in values if _number(v)]
    return sum(kept) / len(kept) if kept else None


def _f(value, digits: int) -> str:
    if not _number(value):
        return "-"
    return "inf" if value == float("inf") else f"{value:.{digits}f}"


def _percent(value) -> str:
    return "-" if not _number(value) else f"{100 * value:.0f} %"


def _accuracy(v: dict) -> str:
    if v["accuracy"] is None:
        return "-"
    drop = v["accuracy_drop"]
    change = "" if drop is None or v["defense"] == "none" else f" ({-100 * drop:+.1f})"
    return f"{100 * v['accuracy']:.1f} %{change}"


def _sizes(pairs: list[tuple]) -> str:
    if not pairs:
        return "-"
    right = sum(1 for estimate, truth in pairs if estimate == truth)
    estimates = sorted({e for e, _ in pairs if e is not None})
    return f"{right}/{len(pairs)} exact (estimates {', '.join(map(str, estimates))})"


def _facts(v: dict) -> str:
    shown = []
    for record in v["facts"] or []:
        if "epsilon" in record:
            shown.append(f"epsilon {record['epsilon']:.3g} (delta {record.get('delta', '?')})")
    if _number(v["training_epsilon"]):
        shown.append(f"training epsilon {v['training_epsilon']:.3g}")
    return "; ".join(shown) or "-"


__all__ = ["write_audit_report"]
