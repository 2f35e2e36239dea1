"""Running the CLI in-process from tests."""

from __future__ import annotations

import sys

from gradleak.cli import main


def call_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run :func:`gradleak.cli.main` in-process; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gradleak", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "1000")  # keep long tmp paths on one line for matching
    monkeypatch.delenv("GRADLEAK_DEVICE", raising=False)
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code
    out, err = capsys.readouterr()
    return code, out, err
