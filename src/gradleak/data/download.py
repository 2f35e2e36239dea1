"""Checksummed downloads and safe archive extraction for the dataset loaders.

Nothing here runs unless a loader is called with ``download=True``; tests use ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from gradleak.errors import GradleakError

_CHUNK = 1 << 20


def md5sum(path: str | os.PathLike) -> str:
    """The hex md5 digest of a file."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(url: str, dest: str | os.PathLike, md5: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and check its md5; return ``dest``.

    The data goes to a temporary file next to ``dest`` that is renamed into place only once the
    checksum matches, so ``dest`` never holds a partial or wrong file. An existing ``dest`` with
    the right checksum is kept without downloading.

    Raises:
        GradleakError: when the download fails or the checksum does not match.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise GradleakError(f"cannot download {url}: {reason}") from exc
        got = digest.hexdigest()
        if got != md5:
            raise GradleakError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {got} (file discarded)"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract a tar archive into ``dest``, refusing members that could escape it.

    Only regular files and folders are allowed, with relative paths and no ``..``; links,
    devices and absolute paths make the whole archive fail before anything is written.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or member.name.startswith("\\"):
                    raise GradleakError(f"unsafe path {member.name!r} in archive {archive}")
                if not (member.isfile() or member.isdir()):
                    raise GradleakError(f"unsupported entry {member.name!r} in archive {archive}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without PEP 706 filters
                tar.extractall(dest, members=members)  # noqa: S202 - members checked above
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise GradleakError(f"cannot extract archive {archive}: {exc}") from exc
    return dest
