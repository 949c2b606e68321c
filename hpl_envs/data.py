"""Where benchmark data lives, and clear errors when it is missing.

The data root is ``$HPL_DATA_DIR`` when set, else a per-user cache directory. Every env
reads its files through :func:`require`, so a missing file always names the command that
fetches it instead of failing deep inside a loader.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import platformdirs

APP_NAME = "hpl"


class DataMissingError(FileNotFoundError):
    """A benchmark file is absent from the data root."""


class DataCorruptError(ValueError):
    """A benchmark file exists but cannot be parsed."""


def data_root() -> Path:
    """The directory holding ``webshop/``, ``alfworld/``, ``intercode_sql/``, ..."""
    env = os.environ.get("HPL_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir(APP_NAME)) / "data"


def cache_dir() -> Path:
    """Derived artefacts (Arrow catalogs, search indexes); safe to delete."""
    env = os.environ.get("HPL_CACHE_DIR")
    path = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir(APP_NAME))
    path.mkdir(parents=True, exist_ok=True)
    return path


def require(relpath: str, env: str) -> Path:
    """Return ``data_root()/relpath`` or raise with the command that fetches it."""
    path = data_root() / relpath
    if not path.exists():
        raise DataMissingError(
            f"{env}: missing data file {path}\n"
            f"  Set HPL_DATA_DIR to a folder that holds it, or run `hpl-data download {env}`"
            " on a machine with internet access."
        )
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing): concurrent processes building
    the same cache entry wait for one builder; the kernel drops it when the holder dies."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def file_digest(paths: list[Path], chunk: int = 1 << 20) -> str:
    """sha256 over the bytes of several files, used to key caches."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]
