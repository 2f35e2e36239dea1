"""What the studies that train the attacker's networks share: cached artifacts, recorded cases.

A study (``learned-inversion``, ``prior-shift``) first trains networks (resumable, cached under
``out/``), then runs attack cases. :class:`Study` records every case in ``out/results.json`` as it
goes (a rerun skips the cases already there), adds the PSNR-per-iteration trajectory of
optimization attacks, and writes the Markdown table at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gradleak.attacks import Reconstruction
from gradleak.experiments.runner import attack_and_report, write_table
from gradleak.learning import read_card
from gradleak.metrics.image import psnr
from gradleak.report import ResultsFile
from gradleak.threat import Observation

ProgressFactory = Callable[[str, int], Callable[[int, int, float], None]]


class Study:
    """The results file of one study run and the attack cases recorded in it.

    Args:
        out: output folder (``results.json``, ``table.md``, ``cases/``, ``artifacts/``).
        name: the preset's name.
        settings: the study's settings dataclass (fields ``data``, ``n_images``, ``iterations``,
            ``restarts``, ``seed`` at least); everything that determines the results.
        progress: the CLI's progress factory, or None.
        images, n_images, iterations, restarts, seed: the preset call's overrides (None keeps
            the setting); the resulting settings are :attr:`settings`.
    """

    def __init__(
        self,
        out: str | Path,
        name: str,
        settings,
        progress: ProgressFactory | None,
        *,
        images: str | None = None,
        n_images: int | None = None,
        iterations: int | None = None,
        restarts: int | None = None,
        seed: int | None = None,
    ):
        self.out = Path(out)
        self.name = name
        self.settings = dataclasses.replace(
            settings,
            data=images or settings.data,
            n_images=n_images or settings.n_images,
            iterations=iterations or settings.iterations,
            restarts=restarts or settings.restarts,
            seed=settings.seed if seed is None else seed,
        )
        self.results = ResultsFile(
            self.out / "results.json",
            name,
            dataclasses.asdict(self.settings),
            group_keys=("variant", "group"),
        )
        self.progress = progress

    def artifact(self, name: str, train: Callable[[Path], object], expect: dict) -> Path:
        """``out/artifacts/NAME.safetensors``, trained by ``train(path)`` unless a finished one
        whose card agrees with ``expect`` is there (training itself resumes from checkpoints)."""
        path = self.out / "artifacts" / f"{name}.safetensors"
        if path.exists():
            card = read_card(path)
            if all(card.get(k) == v for k, v in expect.items()):
                return path
        path.parent.mkdir(parents=True, exist_ok=True)
        train(path)
        return path

    def attack(
        self,
        case_id: str,
        observation: Observation,
        method: str,
        settings: dict,
        *,
        iterations: int | None,
        restarts: int | None,
        seed: int,
        record: dict,
    ) -> dict:
        """Run (or recall) one attack case; ``record`` adds fields such as variant and group."""
        done = self.results.done(case_id)
        if done is not None:
            return done
        callback = self.progress(case_id, iterations or 1) if self.progress else None
        start = time.perf_counter()
        reconstruction, case = attack_and_report(
            observation,
            method,
            settings,
            out=self.out / "cases" / case_id.replace("/", "__"),
            iterations=iterations,
            restarts=restarts,
            seed=seed,
            callback=callback,
        )
        if observation.truth is not None and case.get("order") is not None:
            case["trajectory"] = psnr_trajectory(
                reconstruction, observation.truth.images, case["order"]
            )
        case = {"id": case_id, **record, **case, "wall_seconds": time.perf_counter() - start}
        self.results.add(case)
        return case

    def add(self, case: dict) -> dict:
        """Record a case computed by the study itself (e.g. a batch-size prediction cell)."""
        self.results.add(case)
        return case

    def finish(self) -> dict:
        summary = self.results.as_dict()
        write_table(self.out / "table.md", summary)
        return summary


def psnr_trajectory(
    reconstruction: Reconstruction, truth: torch.Tensor, order: list[int]
) -> list[tuple[int, float]]:
    """``(step, mean PSNR)`` of every frame of ``reconstruction``, in the scored order."""
    if not reconstruction.frames or not reconstruction.frame_steps:
        return []
    return [
        (int(step), float(psnr(frame[order], truth).mean()))
        for step, frame in zip(reconstruction.frame_steps, reconstruction.frames, strict=True)
    ]


def steps_to_reach(trajectory: list, target: float) -> int | None:
    """The first step whose PSNR reaches ``target`` (None if never)."""
    return next((int(step) for step, value in trajectory if value >= target), None)
