"""``gradleak analyze``: what one observation gives away before any optimization runs.

Combines the analyses of this package on the attacker's view of an observation: the batch size
read from the gradients, the labels with their counts, R-GAP's per-layer rank analysis (how much
each layer's gradient discards), and which attacks apply to this model and batch size, with what
each is expected to recover.
"""

from __future__ import annotations

from collections import Counter

from gradleak.analysis.batch_size import estimate_batch_size
from gradleak.analysis.labels import recover_labels
from gradleak.analysis.rank import layer_rank_analysis
from gradleak.errors import GradleakError
from gradleak.models import ImageClassifier
from gradleak.threat import Observation


def analyze(observation: Observation, *, max_exact: int = 3000) -> dict:
    """Report on ``observation`` using only what the attacker may use.

    Returns a JSON-ready dict with ``batch_size_estimate`` (int), ``labels`` (one int per
    estimated sample), ``label_counts``, ``layers`` (per layer ``name``, ``unknowns``,
    ``equations``, ``rank``, ...), ``attacks`` (name -> applicability and expectation), and,
    when the observation carries evaluation-only ground truth, ``truth_check``.
    """
    view = observation.attacker_view()
    model = view.build_model()
    estimate, evidence = estimate_batch_size(view, model, return_details=True)
    batch_size = view.known_batch_size or estimate
    recovery = recover_labels(view, model, batch_size=batch_size)
    layers = layer_rank_analysis(view, batch_size=batch_size, max_exact=max_exact)
    report = {
        "model": observation.model_config.get("name"),
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
        "attacks": applicable_attacks(model, batch_size),
    }
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


def applicable_attacks(model: ImageClassifier, batch_size: int) -> dict[str, dict]:
    """Which attacks apply to ``model`` at ``batch_size``, and what each should recover."""
    from gradleak.attacks.bias import input_layer
    from gradleak.attacks.rgap import feedforward_stages

    out: dict[str, dict] = {}
    try:
        first_name, first = input_layer(model)
        out["bias"] = {
            "applies": True,
            "expect": "exact images"
            if batch_size == 1
            else "one gradient-weighted mixture of the batch, not the images",
        }
        out["fc_unmix"] = {
            "applies": first.out_features >= batch_size,
            "expect": f"unmix the {batch_size} inputs of '{first_name}' from its gradient"
            if first.out_features >= batch_size
            else f"first layer has {first.out_features} units < batch size {batch_size}",
        }
    except GradleakError as err:
        out["bias"] = {"applies": False, "expect": str(err)}
        out["fc_unmix"] = {"applies": False, "expect": str(err)}
    try:
        feedforward_stages(model)
        out["rgap"] = {
            "applies": batch_size == 1,
            "expect": "closed-form images where every layer's system has full rank"
            if batch_size == 1
            else "R-GAP solves batch size 1 only",
        }
    except GradleakError as err:
        out["rgap"] = {"applies": False, "expect": str(err)}
    out["idlg"] = {
        "applies": True,
        "expect": "analytic label + l2 matching; exact labels at batch size 1",
    }
    out["dlg"] = {"applies": True, "expect": "joint image/label matching; degrades with batch size"}
    out["inverting_gradients"] = {
        "applies": True,
        "expect": "cosine matching with TV; recognizable images at small batch sizes",
    }
    return out


def _jsonable(value) -> bool:
    return isinstance(value, int | float | str | bool | list | type(None))
