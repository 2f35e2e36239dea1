"""Locate the shared real-data folder (CIFAR-10 samples, MNIST, Flowers-17, trained models).

The folder is never part of the package: its files may not be redistributed. It is found, in
order, at ``$GRADLEAK_SHARED_DATA``, ``../shared/data`` and ``./shared/data`` relative to the
working directory, and ``shared/data`` next to the repository checkout this package lives in.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradleak.errors import GradleakError

ENV_VAR = "GRADLEAK_SHARED_DATA"


def _candidates() -> list[Path]:
    cwd = Path.cwd()
    # <repo>/src/gradleak/data/shared.py -> <repo>/../shared/data
    package_dir = Path(__file__).resolve().parent.parent
    return [
        cwd / ".." / "shared" / "data",
        cwd / "shared" / "data",
        package_dir / "../../../shared/data",
    ]


def shared_data_dir(required: bool = True) -> Path | None:
    """The shared data folder, or ``None`` when it is absent and ``required`` is false.

    Raises:
        GradleakError: when ``required`` and no folder is found, or when ``$GRADLEAK_SHARED_DATA``
            names a folder that does not exist.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if path.is_dir():
            return path.resolve()
        if required:
            raise GradleakError(f"${ENV_VAR} is set to {env!r}, which is not a folder")
        return None
    for candidate in _candidates():
        if candidate.is_dir():
            return candidate.resolve()
    if required:
        raise GradleakError(
            "shared data folder not found (looked for ../shared/data and ./shared/data); "
            f"set ${ENV_VAR} to its path"
        )
    return None


def shared_file(relpath: str | os.PathLike) -> Path:
    """The path of ``relpath`` inside the shared data folder; it must exist."""
    path = shared_data_dir(required=True) / relpath
    if not path.exists():
        raise GradleakError(f"shared data file not found: {path}")
    return path
