"""Where ``hpl-gen`` writes: a local (or NFS) folder, or any ``pyarrow.fs`` URI (``s3://``,
``gs://``, ``hdfs://``, ``file://``), so the drivers and shards of a cluster run share one place.

Every file is written exactly once and whole: on a local or NFS folder (and any filesystem that
renames) to a temporary name, fsynced, then renamed; on an object store (S3, GCS, Azure) with
one PUT, which makes the object visible only once it is complete. A reader therefore sees a
shard or a table either whole or not at all, which is what resume relies on.

S3 options go in the URI's query, e.g. ``s3://bucket/run1?endpoint_override=10.0.0.5:9000&scheme=http``
(credentials from the usual AWS environment variables or config files).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

OBJECT_STORES = ("S3FileSystem", "GcsFileSystem", "AzureFileSystem")  # a single PUT is atomic


def is_uri(where: str | Path) -> bool:
    return isinstance(where, str) and "://" in where


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """A temporary path beside ``path`` to write the new file to (``.<name>.<pid>.tmp``); once the
    block ends it is fsynced and renamed over ``path``. If anything fails first (a full disk, a
    signal, a bug) the temporary file is removed and the error goes on: ``path`` is then either
    its old self or absent, never partial, and nothing is left beside it. The one way hpl writes
    a local file that a reader (a resume, another process) may open."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path | str, data: bytes | str) -> None:
    """``data`` (text is written as UTF-8) as ``path``, whole or not at all: :func:`replacing`."""
    with replacing(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def remove_stale_temp_files(folder: Path, pattern: str) -> None:
    """Delete ``<name>.<pid>.tmp`` files left by writers that were killed (their pid is gone)."""
    for tmp in Path(folder).glob(pattern):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, IndexError):
            continue


class Output:
    """A folder to write run outputs to, addressed by names relative to it (``a/b.json``)."""

    def __init__(self, where: str | Path) -> None:
        self.where = str(where)
        self.local: Path | None = None
        if is_uri(where):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(str(where))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
                raise ValueError(f"--out {where}: not a usable pyarrow.fs URI ({e})") from e
            if isinstance(self.fs, pafs.LocalFileSystem):
                self.local = Path(self.root)
            self.root = self.root.rstrip("/")
        else:
            self.local = Path(where)
        if self.local is not None:
            self.fs, self.root = pafs.LocalFileSystem(), str(self.local)
        self._query = self.where.partition("?")[2] if is_uri(where) else ""

    def __str__(self) -> str:
        return self.where

    def path(self, name: str = "") -> str:
        """The filesystem path of ``name`` (for ``self.fs``)."""
        return f"{self.root}/{name}".rstrip("/") if name else self.root

    def uri(self, name: str) -> str:
        """``name`` as something another process opens: a local path, or a URI with the same options."""
        if self.local is not None:
            return str(self.local / name)
        scheme = self.where.split("://", 1)[0]
        return f"{scheme}://{self.path(name)}" + (f"?{self._query}" if self._query else "")

    # ------------------------------------------------------------------ reading
    def exists(self, name: str) -> bool:
        if self.local is not None:
            return (self.local / name).exists()
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def names(self, folder: str = "") -> set[str]:
        """The names of the files directly in ``folder`` (one listing: one request on S3)."""
        if self.local is not None:
            d = self.local / folder
            return {p.name for p in d.iterdir() if p.is_file()} if d.is_dir() else set()
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(folder), allow_not_found=True))
        return {i.base_name for i in infos if i.type == pafs.FileType.File}

    def read_text(self, name: str) -> str:
        if self.local is not None:
            return (self.local / name).read_text(encoding="utf-8")
        with self.fs.open_input_stream(self.path(name)) as f:
            return f.read().decode("utf-8")

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_text(name))

    def read_table(self, name: str) -> pa.Table:
        return pq.read_table(self.path(name), filesystem=self.fs)

    # ------------------------------------------------------------------ writing (atomic)
    def makedirs(self, folder: str = "") -> None:
        if self.local is not None:
            (self.local / folder).mkdir(parents=True, exist_ok=True)
        elif type(self.fs).__name__ not in OBJECT_STORES:  # object stores have no folders to make
            self.fs.create_dir(self.path(folder), recursive=True)

    def write_bytes(self, name: str, data: bytes) -> None:
        """``data`` as ``name``, whole or not at all (see the module docstring)."""
        if self.local is not None:
            write_atomically(self.local / name, data)
            return
        if type(self.fs).__name__ in OBJECT_STORES:
            with self.fs.open_output_stream(self.path(name)) as f:
                f.write(data)
            return
        folder, _, base = self.path(name).rpartition("/")
        tmp = f"{folder}/.{base}.{os.getpid()}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, self.path(name))
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_table(self, name: str, table: pa.Table) -> None:
        """A Parquet table, serialised in memory first so a failure writes nothing."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.write_bytes(name, sink.getvalue().to_pybytes())

    def remove(self, name: str) -> None:
        """Delete a file or a folder with everything under it; nothing there is fine."""
        info = self.fs.get_file_info(self.path(name))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(name))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(name))
