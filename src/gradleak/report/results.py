"""``results.json``: settings, versions and one entry per case, written as the run goes.

The file is rewritten atomically after every case, so a killed run loses at most the case in
flight, and a rerun with the same settings resumes after the cases already recorded.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from gradleak.records import environment, json_safe, write_json


def summarize(cases: list[dict]) -> dict:
    """Medians of PSNR/SSIM, mean label accuracy, total seconds over ``cases``."""

    def values(key):
        return [c[key] for c in cases if c.get(key) is not None]

    psnrs, ssims, accs, secs = (
        values("psnr"),
        values("ssim"),
        values("label_accuracy"),
        values("seconds"),
    )
    return {
        "n_cases": len(cases),
        "psnr_median": statistics.median(psnrs) if psnrs else None,
        "ssim_median": statistics.median(ssims) if ssims else None,
        "label_accuracy": statistics.fmean(accs) if accs else None,
        "seconds": sum(secs),
        "seconds_median": statistics.median(secs) if secs else None,
    }


def finest_groups(summary: dict) -> dict[str, dict]:
    """The most detailed per-group summaries (``by_group``, else ``by_variant``, else all)."""
    for key in ("by_group", "by_variant"):
        if summary.get(key):
            return summary[key]
    return {"all": summary}


class ResultsFile:
    """``OUT/results.json`` for one run: resumable when preset and settings are unchanged.

    Args:
        path: the JSON file.
        preset: preset (or ``"attack"``) name.
        settings: everything that determines the results; a file with other settings is not
            resumed but replaced (its cases would not be comparable).
        group_keys: case fields whose values get their own summaries (``summary["by_<key>"]``,
            e.g. ``("variant", "group")``).
    """

    def __init__(
        self, path: str | Path, preset: str, settings: dict, group_keys: tuple[str, ...] = ()
    ):
        self.path = Path(path)
        self.preset = preset
        self.settings = json_safe(settings)
        self.group_keys = group_keys
        self.cases: list[dict] = []
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except (json.JSONDecodeError, OSError):
                old = {}
            if old.get("preset") == preset and old.get("settings") == self.settings:
                self.cases = list(old.get("cases", []))

    def done(self, case_id: str) -> dict | None:
        return next((c for c in self.cases if c["id"] == case_id), None)

    def add(self, case: dict) -> None:
        self.cases = [c for c in self.cases if c["id"] != case["id"]] + [case]
        self.write()

    def as_dict(self) -> dict:
        """The whole file's content; ``summary`` covers all cases and each group."""
        summary = summarize(self.cases)
        for key in self.group_keys:
            groups: dict[str, list[dict]] = {}
            for case in self.cases:
                if key in case:
                    groups.setdefault(str(case[key]), []).append(case)
            if groups:
                summary["by_" + key] = {k: summarize(v) for k, v in groups.items()}
        return {
            "preset": self.preset,
            "settings": self.settings,
            "versions": environment(),
            "cases": self.cases,
            "summary": summary,
        }

    def write(self) -> Path:
        return write_json(self.path, self.as_dict())
