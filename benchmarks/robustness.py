"""Benchmark: no finished case is lost or run twice when ``gradleak run`` / ``gradleak sweep`` are
killed, interrupted, rerun with other settings or started twice on one folder.

Trials (each in a fresh folder, against a clean reference run of the same command):

- ``kill -9``: the command is started and killed with SIGKILL (its whole process group: the
  pool's workers too) at a seeded random point: up to 0.4 s after its k-th case is finished (k
  drawn from 0 to all; 0: once it holds the folder), then the same command runs to completion;
- ``ctrl-c``: SIGINT once the first case is finished (exit 130 expected), then the same command;
- ``other settings``: a finished run's command again with ``--n-images 1`` (exit 2 expected,
  nothing in the folder changed);
- ``two processes``: the same command started a second time while the first holds the folder
  (exit 2 naming the first's pid expected); the first runs to completion.

After each, every case finished before the disturbance must still have its ``case.json``
unchanged (same bytes and modification time: not run twice), every case of the reference must be
listed exactly once in ``results.json`` with the reference's results (status, PSNR, SSIM, labels,
gradient distance), and no ``partial.*`` or ``.lock`` file may be left. Writes
``OUT/robustness.json`` and ``OUT/robustness.md``.

    python benchmarks/robustness.py [--out benchmarks/results] [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gradleak.records import environment, write_json

#: Results of a case that must not depend on the run that made it (timings may).
COMPARED = ("status", "psnr", "ssim", "label_accuracy", "labels", "gradient_distance", "error")
RUN = ["run", "discard-mlp", "--n-images", "2", "--iterations", "2"]
GRID = """[sweep]
images = "bundled"
n_images = 2
seeds = [0]
[grid]
model = ["lenet", "mlp4"]
batch_size = [1]
attack = ["idlg", "bias"]
[attacks.idlg]
iterations = 3
"""


def commands(root: Path) -> dict[str, list[str]]:
    """The two commands, without their ``--out``."""
    grid = root / "grid.toml"
    grid.write_text(GRID)
    return {"run": RUN, "sweep": ["sweep", str(grid), "--workers", "2"]}


def start(args: list[str], out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADLEAK_DEVICE": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-m", "gradleak.cli", *args, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: kill -9 reaches the pool's workers
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def case_files(out: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.parent.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("cases/*/case.json")
    }


def folder_state(out: Path) -> dict[str, tuple[int, bytes]]:
    files = [p for p in out.rglob("*") if p.is_file()]
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def results_of(out: Path) -> dict[str, dict]:
    cases = json.loads((out / "results.json").read_text())["cases"]
    return {c["id"]: {k: c.get(k) for k in COMPARED} for c in cases}, len(cases)


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def check(out: Path, before: dict, reference: dict) -> dict:
    """What was lost, run twice or wrong in ``out`` after the command finished."""
    after = case_files(out)
    lost = sorted(c for c in before if c not in after)
    twice = sorted(c for c in before if c in after and after[c] != before[c])
    results, listed = results_of(out)
    missing = sorted(set(reference) - set(results))
    wrong = sorted(c for c in reference if c in results and results[c] != reference[c])
    leftovers = sorted(
        str(p.relative_to(out)) for p in [*out.glob("cases/*/partial*"), *out.glob(".lock")]
    )
    return {
        "finished_before": len(before),
        "lost": lost + missing,
        "run_twice": twice,
        "wrong": wrong,
        "listed": listed,
        "listed_once": listed == len(results) == len(reference),
        "leftovers": leftovers,
    }


def kill_trial(args, out, cases: int, rng) -> dict:
    """SIGKILL at a seeded random point: once ``k`` cases are finished (k = 0: once the folder
    is held), k drawn from 0..cases, plus a random delay of up to 0.4 s."""
    k, delay = rng.randint(0, cases), rng.uniform(0.0, 0.4)
    process = start(args, out)
    if k == 0:
        wait_for(lambda: (out / ".lock").exists(), process)
    else:
        wait_for(lambda: len(case_files(out)) >= k, process)
    time.sleep(delay)
    running = process.poll() is None
    if running:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    time.sleep(0.5)  # a worker that outlived the kill would finish a case now
    before = case_files(out)
    code, _, stderr = finish(start(args, out))
    return {
        "kill_after_cases": k,
        "kill_delay_s": round(delay, 2),
        "killed": running,
        "exit": code,
        "error": _last(stderr, code),
        **_sure(before),
    }


def ctrl_c_trial(args, out) -> dict:
    process = start(args, out)
    wait_for(lambda: case_files(out), process)
    running = process.poll() is None
    os.killpg(process.pid, signal.SIGINT)
    first, _, _ = finish(process)
    before = case_files(out)
    code, _, stderr = finish(start(args, out))
    return {
        "first_exit": first,
        "expected_first_exit": 130 if running else 0,  # 0: it had finished before the signal
        "exit": code,
        "error": _last(stderr, code),
        **_sure(before),
    }


def other_settings_trial(args, out) -> dict:
    code, _, stderr = finish(start(args, out))
    before, state = case_files(out), folder_state(out)
    other = [*args, "--n-images", "1"] if "--n-images" not in args else _replaced(args)
    second, _, error = finish(start(other, out))
    return {
        "exit": code,
        "second_exit": second,
        "expected_second_exit": 2,
        "second_error": _last(error, 1),
        "folder_unchanged": folder_state(out) == state,
        **_sure(before),
    }


def two_processes_trial(args, out) -> dict:
    """Both started at once: one holds the folder, the other must be refused naming it."""
    first, second = start(args, out), start(args, out)
    (code1, _, error1), (code2, _, error2) = finish(first), finish(second)
    (code, stderr, winner), (refused, error, _) = sorted(
        [(code1, error1, first), (code2, error2, second)], key=lambda r: r[0]
    )
    return {
        "exit": code,
        "error": _last(stderr, code),
        "second_exit": refused,
        "expected_second_exit": 2,
        "second_error": _last(error, 1),
        "second_names_first": f"pid {winner.pid}" in " ".join(error.split()),
        "before": {},
    }


def _replaced(args: list[str]) -> list[str]:
    i = args.index("--n-images")
    return [*args[: i + 1], "1", *args[i + 2 :]]


def _sure(before: dict) -> dict:
    return {"before": before}


def _last(stderr: str, code: int) -> str | None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if code and lines else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--kills", type=int, default=20, help="kill -9 trials, half per command")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the trial folders")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    root = Path(tempfile.mkdtemp(prefix="gradleak-robustness-"))
    started = time.perf_counter()
    trials, references = [], {}
    try:
        for name, args in commands(root).items():
            out = root / f"{name}-reference"
            tick = time.perf_counter()
            code, _, stderr = finish(start(args, out))
            if code != 0:
                raise SystemExit(f"reference {name} failed: {stderr}")
            seconds = time.perf_counter() - tick
            reference, _ = results_of(out)
            references[name] = {"seconds": seconds, "cases": len(reference)}
            print(f"reference {name}: {len(reference)} cases, {seconds:.1f} s", flush=True)
            plans = [("kill -9", i) for i in range(options.kills // 2)]
            plans += [("ctrl-c", 0), ("other settings", 0), ("two processes", 0)]
            for kind, index in plans:
                out = root / f"{name}-{kind.replace(' ', '-')}-{index}"
                tick = time.perf_counter()
                if kind == "kill -9":
                    trial = kill_trial(args, out, len(reference), rng)
                elif kind == "ctrl-c":
                    trial = ctrl_c_trial(args, out)
                elif kind == "other settings":
                    trial = other_settings_trial(args, out)
                else:
                    trial = two_processes_trial(args, out)
                before = trial.pop("before")
                trial = {"command": name, "kind": kind, **trial, **check(out, before, reference)}
                trial["seconds"] = round(time.perf_counter() - tick, 1)
                trial["ok"] = _ok(trial)
                trials.append(trial)
                print(
                    f"{name:5} {kind:14} exit {trial['exit']} finished before "
                    f"{trial['finished_before']:2} lost {len(trial['lost'])} twice "
                    f"{len(trial['run_twice'])} wrong {len(trial['wrong'])} "
                    f"{'ok' if trial['ok'] else 'FAILED'} ({trial['seconds']} s)",
                    flush=True,
                )
    finally:
        if not options.keep:
            shutil.rmtree(root, ignore_errors=True)
    shown = {
        "run": f"gradleak {' '.join(RUN)} --out OUT",
        "sweep": "gradleak sweep GRID.toml --workers 2 --out OUT",
    }
    summary = {
        "trials": len(trials),
        "kill_9_trials": sum(t["kind"] == "kill -9" for t in trials),
        "killed_mid_run": sum(t.get("killed", False) for t in trials),
        "failed_trials": sum(not t["ok"] for t in trials),
        "lost_results": sum(len(t["lost"]) for t in trials),
        "run_twice": sum(len(t["run_twice"]) for t in trials),
        "wrong_results": sum(len(t["wrong"]) for t in trials),
        "seconds": round(time.perf_counter() - started, 1),
    }
    report = {
        "benchmark": "robustness",
        "command": "python benchmarks/robustness.py " + " ".join(sys.argv[1:]),
        "versions": environment(),
        "commands": shown,
        "grid": GRID,
        "references": references,
        "summary": summary,
        "target": "lost results = 0, run twice = 0, every trial ok",
        "trials": trials,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    write_json(options.out / "robustness.json", report)
    (options.out / "robustness.md").write_text(markdown(report))
    print(markdown(report))


def _ok(trial: dict) -> bool:
    clean = not (trial["lost"] or trial["run_twice"] or trial["wrong"] or trial["leftovers"])
    ok = clean and trial["exit"] == 0 and trial["listed_once"]
    if "expected_first_exit" in trial:
        ok = ok and trial["first_exit"] == trial["expected_first_exit"]
    if "expected_second_exit" in trial:
        ok = ok and trial["second_exit"] == trial["expected_second_exit"]
    if "second_names_first" in trial:
        ok = ok and trial["second_names_first"]
    if "folder_unchanged" in trial:
        ok = ok and trial["folder_unchanged"]
    return ok


def markdown(report: dict) -> str:
    s, v = report["summary"], report["versions"]
    met = s["lost_results"] == 0 and s["run_twice"] == 0 and s["failed_trials"] == 0
    lines = [
        "# Robustness: kill -9, Ctrl-C, other settings, two processes",
        "",
        f"`{report['command'].strip()}`: {s['trials']} trials ({s['kill_9_trials']} kill -9, "
        f"{s['killed_mid_run']} of them before the command finished) in "
        f"{s['seconds']:.0f} s; gradleak {v.get('gradleak')}, torch {v.get('torch')}, "
        f"Python {v.get('python')}, {v.get('platform')}.",
        "",
        *(f"- `{name}`: {command}" for name, command in report["commands"].items()),
        "",
        f"Target: {report['target']}: **{'met' if met else 'NOT met'}** — lost results "
        f"{s['lost_results']}, run twice {s['run_twice']}, wrong results {s['wrong_results']}, "
        f"failed trials {s['failed_trials']}.",
        "",
        "| command | trial | disturbance | finished before | exit | lost | run twice | wrong "
        "| listed | ok | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report["trials"]:
        if t["kind"] == "kill -9":
            after = f"case {t['kill_after_cases']}" if t["kill_after_cases"] else "the lock"
            what = (
                f"SIGKILL {t['kill_delay_s']} s after {after}"
                if t["killed"]
                else f"none: it finished before {after} + {t['kill_delay_s']} s"
            )
        elif t["kind"] == "ctrl-c":
            what = f"SIGINT after the first case (exit {t['first_exit']})"
        elif t["kind"] == "other settings":
            what = f"--n-images 1 again (exit {t['second_exit']})"
        else:
            what = f"second process (exit {t['second_exit']})"
        lines.append(
            f"| {t['command']} | {t['kind']} | {what} | {t['finished_before']} | {t['exit']} | "
            f"{len(t['lost'])} | {len(t['run_twice'])} | {len(t['wrong'])} | {t['listed']} | "
            f"{'yes' if t['ok'] else 'NO'} | {t['seconds']} |"
        )
    errors = {t["second_error"] for t in report["trials"] if t.get("second_error")}
    if errors:
        lines += ["", "What the refused second commands said:", ""]
        lines += [f"- `{e}`" for e in sorted(errors)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
