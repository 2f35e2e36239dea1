"""Where commands write: checked before any work starts, so that a bad ``--out`` costs a line,
not a finished computation, and no file the user did not ask to replace is ever replaced."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from gradleak.errors import GradleakError


def _writable_place(path: Path, option: str) -> None:
    """Raise unless ``path`` could be created: its nearest existing ancestor is a folder this
    process can create files in (tried, not guessed: permissions, read-only mounts, root)."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise GradleakError(f"{option} {path}: {parent} is a file, not a folder")
    _try_writing(parent, f"{option} {path}: cannot write in {parent}")


def _try_writing(folder: Path, problem: str) -> None:
    """Create and delete a nameless file in ``folder``; GradleakError ``problem (reason)``."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise GradleakError(f"{problem} ({err.strerror or type(err).__name__})") from None


def output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check that ``path`` is a folder gradleak can write results into (existing or not).

    Raises:
        GradleakError: ``path`` is a file, inside a file, or in a place that cannot be written.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise GradleakError(f"{option} {path} is a file, not a folder")
    if path.is_dir():
        _try_writing(path, f"{option} {path}: cannot write in it")
        return path
    _writable_place(path, option)
    return path


def output_file(
    path: str | os.PathLike,
    option: str = "--out",
    *,
    suffix: str | None = None,
    overwrite: bool = False,
    companions: tuple[str | os.PathLike, ...] = (),
) -> Path:
    """Check that gradleak may write the file ``path``.

    Args:
        path: the file to write.
        option: the option that named it (for messages).
        suffix: the ending the file must have (e.g. ``.safetensors``).
        overwrite: whether the user asked to replace an existing file (``--overwrite``).
        companions: files written beside it (e.g. the ground truth), checked the same way.

    Raises:
        GradleakError: wrong ending, a folder, an existing file without ``overwrite``, or a place
            that cannot be written.
    """
    path = Path(path).expanduser()
    if suffix is not None and not path.name.endswith(suffix):
        raise GradleakError(f"{option} {path}: the file must end in {suffix}")
    for target in (path, *map(Path, companions)):
        if target.is_dir():
            raise GradleakError(f"{option} {path}: {target} is a folder, not a file")
        if target.exists() and not overwrite:
            raise GradleakError(
                f"{option} {path}: {target} exists; choose another name or add --overwrite"
            )
        if target.exists() and not target.is_file():
            raise GradleakError(f"{option} {path}: {target} is not a regular file")
    _writable_place(path, option)
    return path
