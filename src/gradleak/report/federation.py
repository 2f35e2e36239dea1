"""The Flower audit's ``report.html``: per round and client, what the server could reconstruct from
the update it received (truth beside reconstruction where the truth is known), against the
flat-gray no-information baseline, and the updates it could not attack with the reason. One
self-contained page (:mod:`gradleak.report.html`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from gradleak.report.html import escape as _e
from gradleak.report.html import gif_uri, png_uri, write_page
from gradleak.report.html import number as _f
from gradleak.report.html import percent as _percent

_CLASS = {"leaks": "leaks", "stopped": "stopped"}


def write_federation_report(
    path: Path, *, manifest: dict, rows: list[dict], results: dict, out: Path, margin_db: float
) -> Path:
    """Write the report to ``path`` and return it.

    Args:
        manifest: ``captures.json`` of the audited federation.
        rows: :func:`gradleak.flower.evaluation.verdicts` (one per client per round).
        results: the attack run's ``results.json`` content; ``out`` its folder (case figures).
        margin_db: dB over the baseline from which an update counts as leaking.
    """
    local = manifest.get("local") or {}
    hidden = manifest.get("hidden") or []
    rounds = sorted({r["round"] for r in rows})
    nodes = sorted({str(r["node"]) for r in rows})
    setup = (
        f"{manifest.get('strategy', '?')} over {len(nodes)} client(s) x {len(rounds)} round(s); "
        f"model {(manifest.get('model') or {}).get('name', '?')}; local training "
        f"{local.get('optimizer', '?')}, lr {local.get('lr')}, "
        f"{local.get('steps') or str(local.get('epochs')) + ' epoch(s)'} step(s) of batch "
        f"{local.get('batch_size')}; hidden from the server: {', '.join(hidden) or 'nothing'}."
    )
    body = [
        "<h1>gradleak audit of a Flower federation</h1>",
        f"<p class=muted>{_e(setup)}</p>",
        f"<p>{_e(_headline(rows))}</p>",
        "<h2>Every client update</h2>",
        _table(rows, margin_db),
        "<h2>What the server sees in each update</h2>",
        *(_round_section(r, rows, out) for r in rounds),
        _best_gif(rows, out),
        "<h2>Settings and versions</h2>",
        "<p>The capture (captures.json, without its list of captures)</p>",
        f"<pre>{_e(_json({k: v for k, v in manifest.items() if k != 'captures'}))}</pre>",
        "<p>The attacks (results.json settings and versions)</p>",
        f"<pre>{_e(_json({k: results.get(k) for k in ('settings', 'versions')}))}</pre>",
    ]
    return write_page(Path(path), "gradleak audit of a Flower federation", body)


def _headline(rows: list[dict]) -> str:
    leaking = [r for r in rows if r["verdict"] == "leaks"]
    psnrs = [r["best"]["psnr"] for r in leaking]
    text = f"{len(leaking)} of {len(rows)} client updates leak their images"
    if psnrs:
        text += f" (median {statistics.median(psnrs):.1f} dB PSNR)"
    blocked = [r for r in rows if r["verdict"] in ("stopped", "not attackable")]
    if blocked:
        text += f"; {len(blocked)} resisted or could not be attacked"
    return text + "."


def _table(rows: list[dict], margin: float) -> str:
    head = (
        "<table><tr><th>round</th><th>client node</th><th>images</th><th>client metrics</th>"
        "<th>attack</th><th>PSNR (dB)</th><th>SSIM</th><th>labels recovered</th>"
        "<th>baseline PSNR</th><th>verdict</th></tr>"
    )
    lines = []
    for row in rows:
        best = row["best"] or {}
        verdict = row["verdict"]
        word = f"<span class={_CLASS[verdict]}>{verdict}</span>" if verdict in _CLASS else verdict
        if row.get("why"):
            word += f"<br><span class=muted>{_e(row['why'])}</span>"
        metrics = ", ".join(f"{k} {_metric(v)}" for k, v in (row.get("metrics") or {}).items())
        lines.append(
            f"<tr><td>{row['round']}</td><td>{_e(row['node'])}</td>"
            f"<td>{_e(row.get('images', '-'))}</td><td>{_e(metrics or '-')}</td>"
            f"<td>{_e(best.get('variant', '-'))}</td><td>{_f(best.get('psnr'), 1)}</td>"
            f"<td>{_f(best.get('ssim'), 3)}</td><td>{_percent(best.get('label_accuracy'))}</td>"
            f"<td>{_f(row['baseline'], 1)}</td><td>{word}</td></tr>"
        )
    note = (
        "<p class=muted>An update <b>leaks</b> when the best attack's median PSNR against the "
        "client's images beats the no-information baseline (flat gray) by more than "
        f"{margin:g} dB; PSNR and SSIM after optimal matching, labels as recovered from the "
        "update. <b>Not attackable</b>: the reply could not be turned into an observation, or "
        "no attack applies to it (the reason is given).</p>"
    )
    return head + "".join(lines) + "</table>" + note


def _round_section(server_round: int, rows: list[dict], out: Path) -> str:
    parts = [f"<h3>Round {server_round}</h3><div class=pics>"]
    for row in (r for r in rows if r["round"] == server_round):
        best = row["best"] or {}
        grid = (best.get("files") or {}).get("grid")
        caption = f"node {row['node']}: {row['verdict']}"
        if best.get("psnr") is not None:
            caption += f", {best['variant']} {_f(best['psnr'], 1)} dB"
        if grid and (out / grid).exists():
            parts.append(
                f"<figure><img alt='{_e(caption)}' src='{png_uri((out / grid).read_bytes())}'>"
                f"<figcaption class=muted>{_e(caption)}</figcaption></figure>"
            )
        else:
            parts.append(f"<p class=muted>{_e(caption)}: no picture</p>")
    parts.append("</div><p class=muted>Top: the client's images; bottom: reconstructions.</p>")
    return "".join(parts)


def _best_gif(rows: list[dict], out: Path) -> str:
    scored = [r["best"] for r in rows if r["best"] and r["best"].get("psnr") is not None]
    if not scored:
        return ""
    best = max(scored, key=lambda c: c["psnr"])
    gif = (best.get("files") or {}).get("progress")
    if not gif or not (out / gif).exists():
        return ""
    return (
        "<h3>The most leaking update, as the attack optimizes</h3>"
        f"<figure><img alt='optimization of the most leaking update' "
        f"src='{gif_uri((out / gif).read_bytes())}'><figcaption class=muted>the most leaking "
        f"update's reconstruction as the attack optimizes ({_e(best['id'])}, "
        f"{_f(best['psnr'], 1)} dB)</figcaption></figure>"
    )


def _metric(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _json(value) -> str:
    return json.dumps(value, indent=2, default=str)


__all__ = ["write_federation_report"]
