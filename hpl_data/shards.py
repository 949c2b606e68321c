"""Per-task result shards: what makes a long ``hpl-gen`` run crash-safe and resumable.

Each finished task's rows are written to ``<out>/.shards/<stage>/<hash>.json`` exactly once and
whole (temp file, fsync, rename; one PUT on an object store: :mod:`hpl_data.storage`), so a killed
run loses at most the tasks in flight; a rerun skips the tasks whose shard exists. The final
Parquet tables are assembled from the shards, in task order, once all exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hpl_data.storage import Output


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
    def __init__(self, out: Path | str | Output, stage: str) -> None:
        self.out = out if isinstance(out, Output) else Output(out)
        self.dir = f".shards/{stage}"
        self.out.makedirs(self.dir)
        if self.out.local is not None:
            remove_stale_temp_files(self.out.local / self.dir, ".*.tmp")

    def _name(self, task_id: str) -> str:
        return f"{self.dir}/{hashlib.sha1(task_id.encode()).hexdigest()[:20]}.json"

    def done(self, task_id: str) -> bool:
        return self.out.exists(self._name(task_id))

    def put(self, task_id: str, payload: dict) -> None:
        self.out.write_text(self._name(task_id), json.dumps({"task_id": task_id, **payload}, default=str))

    def get(self, task_id: str) -> dict:
        data = self.out.read_json(self._name(task_id))
        if data.get("task_id") != task_id:
            raise ValueError(f"shard {self.out.uri(self._name(task_id))} belongs to task {data.get('task_id')!r}")
        return data

    def pending(self, task_ids: list[str]) -> list[str]:
        """The tasks without a shard (one listing of the shard folder, not one request a task)."""
        have = self.out.names(self.dir)
        return [t for t in task_ids if self._name(t).rpartition("/")[2] not in have]
