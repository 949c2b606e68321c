"""Per-task result shards: what makes a long ``hpl-gen`` run crash-safe and resumable.

Each finished task's rows are written to ``<out>/.shards/<stage>/<hash>.json`` exactly once and
whole (temp file, fsync, rename; one PUT on an object store: :mod:`hpl_data.storage`), so a killed
run loses at most the tasks in flight; a rerun skips the tasks whose shard exists and is whole
(one damaged afterwards, by a disk, a copy or a person, is named and its task done again). The
final Parquet tables are assembled from the shards, in task order, once all exist.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from hpl_data.storage import Output, remove_stale_temp_files


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


class ShardStore:
    """The shards of one stage. ``warn`` receives one line per damaged shard found on resume."""

    def __init__(self, out: Path | str | Output, stage: str, warn: Callable[[str], None] = _stderr) -> None:
        self.out = out if isinstance(out, Output) else Output(out)
        self.dir = f".shards/{stage}"
        self.warn = warn
        self.out.makedirs(self.dir)
        if self.out.local is not None:
            remove_stale_temp_files(self.out.local / self.dir, ".*.tmp")

    def _name(self, task_id: str) -> str:
        return f"{self.dir}/{hashlib.sha1(task_id.encode()).hexdigest()[:20]}.json"

    def done(self, task_id: str) -> bool:
        return self.out.exists(self._name(task_id))

    def put(self, task_id: str, payload: dict) -> None:
        self.out.write_text(self._name(task_id), json.dumps({"task_id": task_id, **payload}, default=str))

    def _load(self, task_id: str) -> tuple[dict | None, str]:
        """(the shard, "") or (None, what is wrong with it)."""
        try:
            text = self.out.read_text(self._name(task_id))
        except UnicodeDecodeError as e:
            return None, f"not UTF-8 text: {e.reason} at byte {e.start}"
        if not text.strip():
            return None, "empty file"
        try:
            data = json.loads(text)
        except ValueError as e:  # json.JSONDecodeError; a truncated file ends mid-value
            where = f": char {e.pos} of {len(text)}" if isinstance(e, json.JSONDecodeError) else ""
            return None, f"truncated or not JSON: {getattr(e, 'msg', e)}{where}"
        if not isinstance(data, dict) or data.get("task_id") != task_id:
            owner = data.get("task_id") if isinstance(data, dict) else None
            return None, f"it holds task {owner!r}, not {task_id!r}"
        return data, ""

    def get(self, task_id: str) -> dict:
        data, problem = self._load(task_id)
        if data is None:
            raise ValueError(f"shard {self.out.uri(self._name(task_id))} is damaged ({problem}); "
                             f"rerun the same command to redo task {task_id}")
        return data

    def pending(self, task_ids: list[str]) -> list[str]:
        """The tasks to do, in order: those without a shard (one listing of the shard folder), and
        those whose shard is damaged (each present shard is read once to check it), named
        through ``warn``. A redone task's new shard replaces the damaged one."""
        have = self.out.names(self.dir)
        todo = []
        for t in task_ids:
            name = self._name(t)
            if name.rpartition("/")[2] not in have:
                todo.append(t)
                continue
            _, problem = self._load(t)
            if problem:
                self.warn(f"shard {self.out.uri(name)} is damaged ({problem}); redoing task {t}")
                todo.append(t)
        return todo
