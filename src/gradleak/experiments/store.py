"""A run's folder: one file per finished case, and the results assembled from them.

``OUT/cases/<case>/case.json`` is written atomically, last, after the case's figures and
reconstruction, so a case is done exactly when its ``case.json`` exists: a killed run (even
``kill -9``) loses at most the cases in flight, and the same command resumes with no finished case
run again. ``OUT/results.json`` (settings, versions, cases, summary), ``results.csv`` (a row per
case) and ``table.md`` are rebuilt from the case files. A folder holding a run with other
settings is refused, never overwritten, and so is one holding finished cases the run would replace
or leave out of its results (:meth:`RunFolder.check_cases`). One process at a time writes a
folder: it holds ``OUT/.lock`` (``flock``, released by the kernel when the process dies, so a
killed run leaves no lock that blocks the next one).

While a case runs, the process running it may keep its best iterate so far in
``OUT/cases/<case>/partial.*`` (:data:`PARTIAL`); they are removed when the case is saved.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import re
import statistics
import time
from pathlib import Path

from gradleak.errors import GradleakError
from gradleak.experiments.spec import Case
from gradleak.records import json_safe, write_json

RESULTS = "results.json"
CASE_FILE = "case.json"
SCORES = ("psnr", "ssim", "label_accuracy", "seconds", "status", "error")
STATUSES = ("done", "skipped", "failed")
LOCK = ".lock"
#: A running case's best iterate so far (:mod:`gradleak.experiments.methods`), while it runs.
PARTIAL = ("partial.json", "partial.safetensors", "partial.png")


def case_folder(case_id: str) -> str:
    """A folder name for ``case_id``: ``/`` becomes ``__``, other unsafe characters ``-``, and
    a digest of the id is appended when any was replaced, so two ids never share a folder."""
    name = re.sub(r"[^A-Za-z0-9_.+=,-]", "-", case_id.replace("/", "__"))
    if name != case_id.replace("/", "__"):
        name += "-" + hashlib.sha256(case_id.encode()).hexdigest()[:8]
    return name


class RunFolder:
    """The output folder of one run of one experiment with one set of settings.

    Args:
        out: the folder.
        name: the experiment's name.
        settings: everything that determines the results (JSON-able).

    Raises:
        GradleakError: ``out`` holds results of another experiment or other settings.
    """

    def __init__(self, out: str | Path, name: str, settings: dict):
        self.out = Path(out)
        self.name = name
        self.settings = json.loads(json.dumps(json_safe(settings), default=str))
        self.records: dict[str, dict] = {}
        self._written = 0.0
        self._lock: int | None = None
        if self.out.exists() and not self.out.is_dir():
            raise GradleakError(f"--out {self.out} is a file, not a folder")
        self._check_results()
        self.out.mkdir(parents=True, exist_ok=True)

    def _check_results(self) -> None:
        existing = self.out / RESULTS
        if existing.exists():
            try:
                old = json.loads(existing.read_text())
            except (OSError, json.JSONDecodeError):
                raise GradleakError(f"{existing} is not readable JSON; move it away") from None
            if old.get("preset") != self.name or old.get("settings") != self.settings:
                raise GradleakError(
                    f"{self.out} holds results of another run "
                    f"({_difference(old, self.name, self.settings)}); choose another --out or "
                    f"move that folder away"
                )

    # ------------------------------------------------------------------ one writer
    def lock(self) -> None:
        """Become the folder's only writer until :meth:`release` (or this process ends): hold
        ``OUT/.lock`` (``flock``) with this process's id in it, then check the results again.

        Raises:
            GradleakError: another process holds the folder (its pid is named), or the results
                there are of another run.
        """
        import fcntl

        path = self.out / LOCK
        while self._lock is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return  # a file system without locks: run unguarded
                raise GradleakError(
                    f"another gradleak process{_lock_owner(path)} is writing in {self.out}; "
                    "wait for it to finish or choose another --out"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file as we opened it: again
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._lock = fd
        try:
            self._check_results()  # a run that finished while we looked is seen now
        except GradleakError:
            self.release()
            raise

    def release(self) -> None:
        """Stop being the folder's writer (removes ``OUT/.lock``)."""
        if self._lock is not None:
            (self.out / LOCK).unlink(missing_ok=True)
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RunFolder:
        self.lock()
        return self

    def __exit__(self, *_exc) -> None:
        self.release()

    def check_cases(self, cases: list[Case]) -> None:
        """Refuse a folder holding finished cases that are not among ``cases`` (another image,
        another case spec): this run would replace them or leave them out of its results.

        Raises:
            GradleakError: naming one of them and how many there are.
        """
        expected = {case_folder(c.id): (c.id, c.key()) for c in cases}
        foreign = []
        for path in sorted((self.out / "cases").glob(f"*/{CASE_FILE}")):
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # torn, not a result: the case runs again
            if not isinstance(record, dict):
                continue
            mine = expected.get(path.parent.name)
            if mine != (record.get("id"), record.get("key")):
                why = "not a case of this run" if mine is None else "another spec of the case"
                foreign.append(f"cases/{path.parent.name}: {why}")
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise GradleakError(
                f"{self.out} holds finished cases of another run ({foreign[0]}{more}) that this "
                "run would replace or drop; choose another --out or move that folder away"
            )

    def claim(self, versions: dict) -> None:
        """Write a ``results.json`` without cases unless one is there: from now on a run with
        other settings is refused here, also while this one is still training artifacts."""
        if not (self.out / RESULTS).exists():
            empty = {"preset": self.name, "settings": self.settings, "versions": versions}
            write_json(self.out / RESULTS, {**empty, "cases": [], "summary": summarize([])})

    def partial(self, case: Case) -> dict | None:
        """What ``partial.json`` says of the best iterate an interrupted run of ``case`` kept
        (None: nothing kept, or kept for another spec of the case)."""
        return case_record(self.out / "cases" / case_folder(case.id) / PARTIAL[0], case)

    # ------------------------------------------------------------------ cases
    def done(self, case: Case) -> dict | None:
        """The record of ``case`` if a previous run finished it (same case key)."""
        record = case_record(self.out / "cases" / case_folder(case.id) / CASE_FILE, case)
        if record is not None:  # torn or foreign: None, and the case runs again
            self.records[case.id] = record
        return record

    def save(self, case: Case, record: dict, files: dict[str, bytes]) -> dict:
        """Write the case's files, then its ``case.json`` (atomically, last)."""
        folder = self.out / "cases" / case_folder(case.id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(folder / name)
        contract = dict.fromkeys(("psnr", "ssim", "label_accuracy", "seconds", "error"))
        record = {"id": case.id, **case.record, **contract, **record, "key": case.key()}
        if files:
            record["files"] = {
                Path(name).stem: (folder / name).relative_to(self.out).as_posix() for name in files
            }
        write_json(folder / CASE_FILE, record)
        for name in PARTIAL:  # the case is done: its kept best iterate is not needed any more
            (folder / name).unlink(missing_ok=True)
        self.records[case.id] = record
        return record

    # ------------------------------------------------------------------ results
    def results(self, cases: list[Case], versions: dict, extra=None) -> dict:
        """The ``results.json`` content for ``cases`` (finished ones, in case order)."""
        records = [self.records[c.id] for c in cases if c.id in self.records]
        summary = summarize(records)
        for key in ("variant", "group"):
            groups: dict[str, list[dict]] = {}
            for record in records:
                if key in record:
                    groups.setdefault(str(record[key]), []).append(record)
            if groups:
                summary["by_" + key] = {k: summarize(v) for k, v in groups.items()}
        results = {
            "preset": self.name,
            "settings": self.settings,
            "versions": versions,
            "cases": records,
            "summary": summary,
        }
        if extra is not None:
            results.update(extra(results))
        return results

    def due(self, every: float) -> bool:
        """Whether ``every`` seconds passed since the results were last written."""
        return time.monotonic() - self._written >= every

    def write(self, results: dict, table: str, axes: list[str]) -> None:
        """Write ``results.json``, ``results.csv`` (columns: ``axes``, then the scores) and
        ``table.md``."""
        self._written = time.monotonic()
        write_json(self.out / RESULTS, results)
        _write_text(self.out / "results.csv", csv_table(results["cases"], axes))
        _write_text(self.out / "table.md", table)


def summarize(records: list[dict]) -> dict:
    """Medians of PSNR/SSIM, mean label accuracy, seconds, and cases per status."""

    def values(key):
        return [r[key] for r in records if isinstance(r.get(key), int | float)]

    psnrs, ssims, accuracies, seconds = (
        values(k) for k in ("psnr", "ssim", "label_accuracy", "seconds")
    )
    statuses = [r.get("status", "done") for r in records]
    return {
        "n_cases": len(records),
        **{f"n_{s}": statuses.count(s) for s in STATUSES},
        "psnr_median": statistics.median(psnrs) if psnrs else None,
        "ssim_median": statistics.median(ssims) if ssims else None,
        "label_accuracy": statistics.fmean(accuracies) if accuracies else None,
        "seconds": sum(seconds),
        "seconds_median": statistics.median(seconds) if seconds else None,
    }


def finest_groups(summary: dict) -> dict[str, dict]:
    """The most detailed per-group summaries (``by_group``, else ``by_variant``, else all)."""
    for key in ("by_group", "by_variant"):
        if summary.get(key):
            return summary[key]
    return {"all": summary}


def csv_table(records: list[dict], axes: list[str]) -> str:
    """One row per case: its id, the values of ``axes``, then the scores and status."""
    axes = [a for a in axes if a not in SCORES and a != "id"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", *axes, *SCORES])
    for record in records:
        row = [record["id"]]
        row += [_cell(record.get(key)) for key in axes]
        row += [_cell(record.get(key, "done" if key == "status" else None)) for key in SCORES]
        writer.writerow(row)
    return buffer.getvalue()


def markdown_table(results: dict) -> str:
    """The per-group Markdown table of a run."""
    lines = [
        f"# {results['preset']}",
        "",
        "| group | cases | PSNR median (dB) | SSIM median | label acc. | s / case | not run |",
        "|---|---|---|---|---|---|---|",
    ]
    by_group: dict[str, list[dict]] = {}
    for record in results["cases"]:
        by_group.setdefault(str(record.get("group", record.get("variant", "all"))), []).append(
            record
        )
    for name, records in by_group.items():
        s = summarize(records)
        reasons = sorted({r.get("error", "") for r in records if r.get("status") != "done"})
        not_run = f"{len(records) - s['n_done']}: {'; '.join(reasons)}" if reasons else ""
        lines.append(
            f"| {name} | {s['n_cases']} | {_fmt(s['psnr_median'], 2)} | "
            f"{_fmt(s['ssim_median'], 3)} | {_fmt(s['label_accuracy'], 2)} | "
            f"{_fmt(s['seconds_median'], 1)} | {not_run} |"
        )
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "+".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def case_record(path: Path, case: Case) -> dict | None:
    """The JSON record at ``path`` if it is one of ``case`` with its current spec (same key);
    None when missing, torn, not a record, or of another spec."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("key") == case.key() else None


def _lock_owner(path: Path) -> str:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return ""
    return f" (pid {pid})"


def _difference(old: dict, name: str, settings: dict) -> str:
    if old.get("preset") != name:
        return f"preset {old.get('preset')!r}, not {name!r}"
    before = old.get("settings") or {}
    keys = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    shown = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in keys[:3])
    return f"other settings: {shown}" if shown else "other settings"


__all__ = ["RunFolder", "case_folder", "csv_table", "markdown_table", "summarize"]
