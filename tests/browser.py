"""Render a self-contained report in Debian's headless Chromium and check what a person sees."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

needs_chromium = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)


def check_renders(report: Path, tmp_path: Path, min_images: int) -> None:
    """Every image of ``report`` decodes, no console message, a screenshot that is not blank."""
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    url = report.resolve().as_uri()
    dom = subprocess.run(
        [*browser, "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
         "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom.stdout)
    assert loaded, "the page's load handler never ran"
    done, total = map(int, loaded.groups())
    assert total >= min_images and done == total  # every image decoded
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # no script error, no console message
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,2400", url],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1200)
    assert (pixels < 200).mean() > 0.05  # text, tables and images, not a blank page
    assert pixels.std() > 20
