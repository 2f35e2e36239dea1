"""``gradleak analyze``: what one observation gives away before any optimization runs.

Combines the analyses of this package on the attacker's view of an observation: the batch size
read from the gradients, the labels with their counts, R-GAP's per-layer rank analysis (how much
each layer's gradient discards), which attacks apply to this model and batch size, with what
each is expected to recover, and the malicious modifications found in the model the server sent
(:func:`gradleak.malicious.detect_modifications`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from gradleak.analysis.rank import layer_rank_analysis
from gradleak.attacks import AttackContext, check_all
from gradleak.gradient import estimate_batch_size, recover_labels
from gradleak.malicious import detect_modifications
from gradleak.models import ImageClassifier
from gradleak.threat import Observation


def analyze(
    observation: Observation,
    *,
    max_exact: int = 3000,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Report on ``observation`` using only what the attacker may use; ``progress(stage)`` is
    told each stage as it starts (the rank analysis of a large model takes a while).

    Returns a JSON-ready dict with ``batch_size_estimate`` (int), ``labels`` (one int per
    estimated sample), ``label_counts``, ``layers`` (per layer ``name``, ``unknowns``,
    ``equations``, ``rank``, ...), ``attacks`` (name -> applicability and expectation),
    ``server_modifications`` (what a malicious server did to the model, found from its weights
    alone: per finding ``name``, ``layer``, ``evidence``; empty for an honest model), and,
    when the observation carries evaluation-only ground truth, ``truth_check``.
    """
    stage = progress or (lambda name: None)
    view = observation.attacker_view()
    model = view.build_model()
    stage("estimating the batch size")
    estimate, evidence = estimate_batch_size(view, model, return_details=True)
    batch_size = view.known_batch_size or estimate
    stage("recovering the labels")
    recovery = recover_labels(view, model, batch_size=batch_size)
    stage("analyzing the rank of every layer's gradient")
    layers = layer_rank_analysis(view, batch_size=batch_size, max_exact=max_exact)
    stage("checking which attacks apply")
    attacks = applicable_attacks(view, batch_size, model)
    stage("inspecting the model for malicious modifications")
    report = {
        "model": observation.model_config.get("name"),
        "observed": view.describe(),
        "batch_size_known": view.known_batch_size,
        "batch_size_estimate": int(estimate),
        "batch_size_estimate_exact": bool(evidence.get("exact", False)),
        "batch_size_evidence": {k: v for k, v in evidence.items() if _jsonable(v)},
        "labels_known": view.labels is not None,
        "labels": recovery.labels.tolist(),
        "label_counts": {str(k): v for k, v in sorted(recovery.counts.items())},
        "label_method": recovery.method,
        "layers": layers,
        "discarded_total": sum(row.get("discarded", 0) for row in layers),
        "attacks": attacks,
        "server_modifications": [f.as_dict() for f in detect_modifications(model)],
    }
    if view.kind == "update":
        report["note"] = (
            "batch size, labels and ranks are read from the update as the mean gradient over "
            "the local steps (Observation.gradient_estimate): approximate when K > 1"
        )
    truth = observation.truth
    if truth is not None:
        true_counts = Counter(truth.labels.tolist())
        got = Counter(report["labels"])
        report["truth_check"] = {
            "batch_size": len(truth.labels),
            "batch_size_correct": int(estimate) == len(truth.labels),
            "label_accuracy": sum(min(n, got[k]) for k, n in true_counts.items())
            / len(truth.labels),
        }
    return report


def applicable_attacks(
    observation: Observation, batch_size: int, model: ImageClassifier | None = None
) -> dict[str, dict]:
    """Every registered attack: whether it applies at ``batch_size``, what it should recover, or
    why it does not apply."""
    view = observation.attacker_view()
    model = view.build_model() if model is None else model
    out: dict[str, dict] = {}
    for name, (attack, problems) in check_all(view, batch_size=batch_size, model=model).items():
        if problems:
            out[name] = {"applies": False, "expect": "; ".join(problems)}
            continue
        context = AttackContext(name, view, model, batch_size, attack.settings)
        out[name] = {"applies": True, "expect": attack.expectation(context)}
    return out


def _jsonable(value) -> bool:
    return isinstance(value, int | float | str | bool | list | type(None))
