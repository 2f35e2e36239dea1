"""The audit's ``report.html``: one self-contained page (images, GIFs and plots embedded as data
URIs, no script or style from elsewhere) that a person reads without gradleak.

It says, per defense, how much leaks (the best attack's reconstruction beside the truth, its
PSNR and SSIM, the labels recovered, the batch size inferred) against the no-information
baseline, what the defense costs in accuracy, the leakage-vs-utility plot, and the settings and
versions of the run.
"""

from __future__ import annotations

import base64
import io
import statistics
from pathlib import Path

from gradleak.report.html import escape as _e
from gradleak.report.html import gif_uri as _gif_uri
from gradleak.report.html import is_number, write_page
from gradleak.report.html import number as _f
from gradleak.report.html import percent as _percent
from gradleak.report.html import png_uri as _png_uri


def write_audit_report(
    path: Path,
    *,
    title: str,
    setup: str,
    verdicts: list[dict],
    margin_db: float,
    settings: list[tuple[str, str]],
) -> Path:
    """Write the report to ``path`` (atomically) and return it.

    Args:
        title, setup: the page's title and the one-line setup under it.
        verdicts: one dict per defense (:func:`gradleak.experiments.audit.audit_verdicts`):
            ``defense``, ``rows`` (per attack: variant, attack, psnr, ssim, label_accuracy,
            done, not_run), ``best``, ``baseline``, ``baseline_name``, ``leaks``, ``labels``,
            ``batch_sizes``, ``accuracy``, ``accuracy_drop``, ``facts``, ``training_epsilon``
            and ``pictures`` (``grid``: an RGB uint8 array, ``gif``: GIF bytes, ``gif_psnr``).
        margin_db: dB over the baseline from which an attack counts as leaking.
        settings: ``(caption, text)`` pairs shown verbatim at the end (the audit file, budgets,
            versions).
    """
    body = [
        f"<h1>gradleak audit: {_e(title)}</h1>",
        f"<p class=muted>{_e(setup)}</p>",
        "<h2>Verdict per defense</h2>",
        _verdict_table(verdicts, margin_db),
        _tradeoff_figure(verdicts),
        "<h2>What each defense lets through</h2>",
        *(_defense_section(v) for v in verdicts),
        "<h2>Every attack, every defense</h2>",
        _summary_table(verdicts),
        "<h2>Settings and versions</h2>",
        *(f"<p>{_e(caption)}</p><pre>{_e(text)}</pre>" for caption, text in settings),
    ]
    return write_page(Path(path), f"gradleak audit: {title}", body)


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
            f"src='{_png_uri(pictures['grid'])}'><figcaption class=muted>top: the client's private "
            f"images; bottom: {_e(best['variant'])}'s reconstructions</figcaption></figure>"
        )
    if "gif" in pictures:
        parts.append(
            f"<figure><img alt='optimization of the best case' src='{_gif_uri(pictures['gif'])}'>"
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


# ---------------------------------------------------------------------- formatting
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
    if is_number(v["training_epsilon"]):
        shown.append(f"training epsilon {v['training_epsilon']:.3g}")
    return "; ".join(shown) or "-"


__all__ = ["write_audit_report"]
