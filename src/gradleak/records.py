"""JSON records: values made JSON-safe, written atomically, with the versions that made them.

The lowest layer of gradleak's files (it imports no other gradleak module): observations,
reconstructions, artifacts, checkpoints and results all record their facts through it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path


def json_safe(value):
    """Replace NaN/inf by None and tuples by lists, recursively, so that the JSON is valid."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: dict) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n")
    tmp.replace(path)
    return path


def environment() -> dict:
    """Versions and machine facts recorded with every result."""
    import numpy as np
    import scipy
    import skimage
    import torch

    import gradleak

    return {
        "gradleak": gradleak.__version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
