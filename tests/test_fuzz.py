"""Seeded random mutations of valid observation and image files, through the CLI in-process
(``benchmarks/fuzz.py`` makes the cases; it runs 500 of them, this test a few dozen:
``GRADLEAK_FUZZ_CASES=N`` runs N). Every run must end with exit status 0, or 2 and exactly one
``error:`` line, within its time bound: no traceback, no hang."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.clitools import call_main

CASES = int(os.environ.get("GRADLEAK_FUZZ_CASES", "48"))
SEED = 0
TIMEOUT = 20.0  # seconds per case


def _fuzz_module():
    """``benchmarks/fuzz.py``, loaded from its file (a package of another distribution is
    also called ``benchmarks``)."""
    name = "gradleak_benchmarks_fuzz"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


fuzz = _fuzz_module()


@pytest.fixture(scope="module")
def bases(tmp_path_factory, shared_dir):
    """The valid files (observations made by ``gradleak observe``, images) cases mutate."""
    return fuzz.make_bases(tmp_path_factory.mktemp("bases"), shared_dir, fuzz.run_in_process)


def test_mutated_files_end_in_success_or_one_error_line(bases, tmp_path, monkeypatch, capsys):
    def run(args):
        return call_main(monkeypatch, capsys, *args)

    records = []
    for index in range(CASES):
        case = fuzz.make_case(index, SEED, bases, tmp_path)
        records.append(fuzz.run_case(case, run, TIMEOUT))
        shutil.rmtree(case.folder, ignore_errors=True)
    bad = [r for r in records if r["outcome"] not in ("exit 0", "exit 2")]
    assert not bad, "\n".join(
        f"case {r['index']} ({r['kind']}: {r['mutation']}; {r['command']}): {r['outcome']}\n"
        f"{r['detail']}"
        for r in bad
    )
    summary = fuzz.summarize(records)["by_outcome"]
    assert summary["exit 2"] > CASES // 2  # most mutations break the file: refused in one line
