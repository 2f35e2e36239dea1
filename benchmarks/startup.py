"""Benchmark: how long the CLI takes to answer ``--help`` and ``list``, against importing torch.

Wall time of whole commands (a fresh interpreter each), median of ``--repeats`` runs after one
warm-up run each (files in the page cache). Writes ``OUT/startup.json`` and ``OUT/startup.md``.

    python benchmarks/startup.py [--out benchmarks/results] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gradleak.records import environment, write_json

COMMANDS = {
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "gradleak --help": [sys.executable, "-m", "gradleak.cli", "--help"],
    "gradleak list": [sys.executable, "-m", "gradleak.cli", "list"],
}


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    seconds = {}
    for name, command in COMMANDS.items():
        wall(command)
        seconds[name] = statistics.median(wall(command) for _ in range(args.repeats))
    torch_import = seconds["python -c 'import torch'"]
    report = {
        "benchmark": "startup",
        "command": "python benchmarks/startup.py " + " ".join(sys.argv[1:]),
        "versions": environment(),
        "seconds": seconds,
        "help_over_torch_import": seconds["gradleak --help"] / torch_import,
        "target": "gradleak --help takes at most 0.5x the time of python -c 'import torch'",
    }
    write_json(args.out / "startup.json", report)
    lines = [
        "# CLI start-up",
        "",
        f"`{report['command']}`; median of {args.repeats} runs, torch "
        f"{report['versions']['torch']}, {report['versions']['platform']}.",
        "",
        "| command | seconds | vs import torch |",
        "|---|---|---|",
        *(f"| `{n}` | {s:.2f} | {s / torch_import:.2f}x |" for n, s in seconds.items()),
        "",
        f"Target: {report['target']}: "
        f"{'met' if report['help_over_torch_import'] <= 0.5 else 'not met'} "
        f"({report['help_over_torch_import']:.2f}x).",
        "",
    ]
    (args.out / "startup.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
