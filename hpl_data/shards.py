"""Per-task result shards: what makes a long ``hpl-gen`` run crash-safe and resumable.

Each finished task's rows are written to ``<out>/.shards/<stage>/<hash>.json`` (temp file, fsync,
rename), so a killed run loses at most the tasks in flight; a rerun skips the tasks whose shard
exists. The final Parquet tables are assembled from the shards, in task order, once all exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


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


class ShardStore:
    def __init__(self, out: Path, stage: str) -> None:
        self.dir = Path(out) / ".shards" / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.dir, ".*.tmp")

    def _path(self, task_id: str) -> Path:
        return self.dir / f"{hashlib.sha1(task_id.encode()).hexdigest()[:20]}.json"

    def done(self, task_id: str) -> bool:
        return self._path(task_id).exists()

    def put(self, task_id: str, payload: dict) -> None:
        path = self._path(task_id)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"task_id": task_id, **payload}, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def get(self, task_id: str) -> dict:
        with open(self._path(task_id), encoding="utf-8") as f:
            data = json.load(f)
        if data.get("task_id") != task_id:
            raise ValueError(f"shard {self._path(task_id)} belongs to task {data.get('task_id')!r}")
        return data

    def pending(self, task_ids: list[str]) -> list[str]:
        return [t for t in task_ids if not self.done(t)]
