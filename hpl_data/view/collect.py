"""Read hpl-gen folders and hpl-eval outputs into the report's payload.

The payload is built for a fast first render of large datasets: what the overview and the
filters need (rewards, buckets, task types, ...) is columnar and small; the conversations are
cut into chunks of ``CHUNK`` rows, each gzip-compressed with its strings interned, and only
decompressed by the page when a row is opened.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 256
PAIR_TABLES = ("traj_pairs", "step_pairs", "group_pairs")
ROLES = ("user", "assistant", "system", "tool")


class ViewInputError(ValueError):
    """A path that is not an hpl-gen folder, an hpl-eval output or an hpl Parquet table."""


class Codes:
    """Dictionary-encodes a string column: values -> small ints, plus the value list."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, value: Any) -> int:
        key = "" if value is None else str(value)
        if key not in self._index:
            self._index[key] = len(self.values)
            self.values.append(key)
        return self._index[key]


class ChunkWriter:
    """Rows' texts, CHUNK rows per gzip+base64 block, strings interned within a block."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool  # zlib releases the GIL: blocks compress in parallel
        self._futures: list[Future] = []
        self._rows: list[Any] = []
        self._strings: list[str] = []
        self._index: dict[str, int] = {}

    def text(self, value: str | None) -> int:
        key = value or ""
        if key not in self._index:
            self._index[key] = len(self._strings)
            self._strings.append(key)
        return self._index[key]

    def messages(self, msgs: list[dict] | None) -> list[int]:
        """A message is one int: string index * 4 + role code."""
        out = []
        for m in msgs or []:
            role = m.get("role") or "user"
            out.append(self.text(m.get("content")) * 4 + (ROLES.index(role) if role in ROLES else 0))
        return out

    def add(self, row: Any) -> None:
        self._rows.append(row)
        if len(self._rows) == CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        raw = json.dumps({"s": self._strings, "r": self._rows}, separators=(",", ":"), allow_nan=False).encode()
        self._futures.append(self._pool.submit(_pack, raw))
        self._rows, self._strings, self._index = [], [], {}

    @property
    def blocks(self) -> list[str]:
        self.flush()
        return [f.result() for f in self._futures]


def _pack(raw: bytes) -> str:
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode()


def _columns(table: pa.Table) -> Callable[..., list]:
    """``col(name, default)``: a column as a list, or ``default`` per row where the table lacks it
    (older files, other tables)."""
    names = set(table.column_names)

    def col(name: str, default: Any = None) -> list:
        return table.column(name).to_pylist() if name in names else [default] * table.num_rows

    return col


def _round(values: list, digits: int = 4) -> list:
    """Rounded for a compact payload; NaN/inf (not JSON) become null."""
    return [round(float(v), digits) if v is not None and math.isfinite(v) else None for v in values]


class Collector:
    """Accumulates sources, pairs, episodes and eval runs from any number of inputs."""

    def __init__(self) -> None:
        self.sources: list[dict] = []
        self.tables: list[dict] = []
        self.evals: list[dict] = []
        self.codes = {k: Codes() for k in ("level", "bucket", "task_type", "task_id", "segmenter", "role",
                                          "agent", "stop_reason", "split", "env")}
        self.pairs: dict[str, list] = {k: [] for k in ("src", "level", "bucket", "task_type", "task_id", "delta_r",
                                                        "cr", "rr", "cstd", "rstd", "nroll", "gstart", "glen",
                                                        "segmenter")}
        self.pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)))
        self.pair_chunks = ChunkWriter(self.pool)
        self.episodes: dict[str, list] = {k: [] for k in ("src", "role", "agent", "task_type", "task_id", "reward",
                                                           "won", "steps", "stop_reason", "failed", "split",
                                                           "truncated")}
        self.episode_chunks = ChunkWriter(self.pool)

    # --- inputs ---------------------------------------------------------------------------
    def add_path(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            raise ViewInputError(f"{path}: no such file or folder")
        if path.is_dir():
            if (path / "manifest.json").exists() or any(path.glob("*_pairs.parquet")) \
                    or any(path.glob("trajectories_*.parquet")):
                self.add_gen_folder(path)
            elif (path / "summary.json").exists():
                self.add_eval_json(path / "summary.json")
            else:
                raise ViewInputError(f"{path}: neither an hpl-gen folder (manifest.json, *_pairs.parquet) "
                                     "nor an hpl-eval folder (summary.json)")
        elif path.suffix == ".json":
            self.add_eval_json(path)
        elif path.suffix == ".parquet":
            src = self._source("table", path, path.stem, {}, None)
            self.add_table(path, src)
        else:
            raise ViewInputError(f"{path}: expected a folder, an hpl-eval JSON or a Parquet file")

    def _source(self, kind: str, path: Path, label: str, info: dict, protocol: dict | None) -> int:
        self.sources.append({"kind": kind, "path": str(path), "label": label, "protocol": protocol, **info})
        return len(self.sources) - 1

    def add_gen_folder(self, folder: Path) -> None:
        manifest: dict = {}
        if (folder / "manifest.json").exists():
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
            except json.JSONDecodeError as e:
                raise ViewInputError(f"{folder / 'manifest.json'}: not valid JSON ({e})") from e
        config = manifest.get("config", {})
        src = self._source("gen", folder, folder.name, {
            "env": config.get("env"), "split": config.get("split"), "config": config,
            "counters": manifest.get("counters", {}), "finished": manifest.get("finished")},
            manifest.get("protocol"))
        tables = sorted(folder.glob("*.parquet"))
        if not tables:
            raise ViewInputError(f"{folder}: no Parquet tables")
        for path in tables:
            self.add_table(path, src)

    def add_eval_json(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ViewInputError(f"{path}: not a readable hpl-eval JSON ({e})") from e
        runs = data["runs"] if isinstance(data, dict) and "runs" in data else [data]
        if not runs or not all(isinstance(r, dict) and "env" in r and "avg_reward" in r for r in runs):
            raise ViewInputError(f"{path}: not an hpl-eval summary (needs env, split, avg_reward)")
        label = path.parent.name if path.name == "summary.json" else path.stem
        agent = data.get("agent") or runs[0].get("agent", "?")
        for run in runs:
            run = {k: v for k, v in run.items() if k != "per_episode"}
            src = self._source("eval", path, f"{label}: {run['env']}/{run.get('split', '?')}",
                               {"env": run["env"], "split": run.get("split"), "agent": agent}, run.get("protocol"))
            self.evals.append({"source": src, "label": label, "agent": agent, "summary": run})
            trajectories = run.get("trajectories")
            if trajectories and (path.parent / trajectories).exists():
                self.add_table(path.parent / trajectories, src)

    def add_table(self, path: Path, src: int) -> None:
        """Summary stats from two columns, then the rows in record batches (memory stays bounded
        by a batch, not the file)."""
        try:
            file = pq.ParquetFile(path)
            cols = set(file.schema_arrow.names)
            rows = file.metadata.num_rows
            stat_col = "delta_r" if "delta_r" in cols else "reward" if "reward" in cols else None
            summary = pq.read_table(path, columns=[c for c in ("task_id", stat_col) if c in cols])
            if {"chosen", "rejected", "delta_r"} <= cols:
                add = self._add_pairs
            elif {"actions", "observations", "reward"} <= cols:
                add = self._add_episodes
            else:
                add = None
            for batch in file.iter_batches(batch_size=4096) if add else ():
                add(pa.Table.from_batches([batch]), src)
        except (OSError, pa.ArrowException) as e:
            raise ViewInputError(f"{path}: unreadable Parquet ({e})") from e
        tasks = len(set(summary.column("task_id").to_pylist())) if "task_id" in cols else 0
        mean = sum(v or 0 for v in summary.column(stat_col).to_pylist()) / rows if stat_col and rows else None
        self.tables.append({"source": src, "name": path.stem, "rows": rows, "tasks": tasks,
                            "stat": "ΔR" if stat_col == "delta_r" else "reward", "mean": mean})

    # --- tables ---------------------------------------------------------------------------
    def _add_pairs(self, table: pa.Table, src: int) -> None:
        n, col = table.num_rows, _columns(table)
        p, c = self.pairs, self.codes
        p["src"] += [src] * n
        p["level"] += [c["level"](v) for v in col("level", "traj")]
        p["bucket"] += [c["bucket"](v) for v in col("bucket", "")]
        p["task_type"] += [c["task_type"](v) for v in col("task_type", "")]
        p["task_id"] += [c["task_id"](v) for v in col("task_id", "")]
        p["segmenter"] += [c["segmenter"](v) for v in col("segmenter", "")]
        p["delta_r"] += _round(col("delta_r", 0.0))
        p["cr"] += _round(col("chosen_reward"))
        p["rr"] += _round(col("rejected_reward"))
        p["cstd"] += _round(col("chosen_std"))
        p["rstd"] += _round(col("rejected_std"))
        p["nroll"] += col("n_rollouts", 0)
        p["gstart"] += col("group_start", None)
        p["glen"] += col("group_length", None)
        w = self.pair_chunks
        for prompt, chosen, rejected, co, ro in zip(col("prompt"), col("chosen"), col("rejected"),
                                                    col("chosen_outcomes"), col("rejected_outcomes")):
            w.add([w.messages(prompt), w.messages(chosen), w.messages(rejected),
                   _round(co) if co is not None else None, _round(ro) if ro is not None else None])

    def _add_episodes(self, table: pa.Table, src: int) -> None:
        n, col = table.num_rows, _columns(table)
        e, c = self.episodes, self.codes
        e["src"] += [src] * n
        e["role"] += [c["role"](v) for v in col("role", "")]
        e["agent"] += [c["agent"](v) for v in col("agent", "")]
        e["split"] += [c["split"](v) for v in col("split", "")]
        e["task_type"] += [c["task_type"](v) for v in col("task_type", "")]
        e["task_id"] += [c["task_id"](v) for v in col("task_id", "")]
        e["reward"] += _round(col("reward", 0.0))
        e["won"] += [1 if v else 0 for v in col("won", False)]
        e["steps"] += col("n_steps", 0)
        e["truncated"] += [1 if v else 0 for v in col("truncated", False)]
        e["stop_reason"] += [c["stop_reason"](v) for v in col("stop_reason", "")]
        errors = col("error")
        e["failed"] += [1 if v else 0 for v in errors]
        w = self.episode_chunks
        for instr, actions, observations, valid, logprobs, entropies, error in zip(
                col("instruction"), col("actions"), col("observations"), col("action_valid"), col("logprobs"),
                col("entropies"), errors):
            w.add([w.text(instr), [w.text(a) for a in actions or []], [w.text(o) for o in observations or []],
                   [1 if v else 0 for v in valid] if valid is not None else None,
                   _round(logprobs) if logprobs is not None else None,
                   _round(entropies) if entropies is not None else None, w.text(error) if error else -1])

    # --- output ---------------------------------------------------------------------------
    def payload(self) -> dict:
        from hpl_data import compare
        from hpl_data.protocol import describe, mismatches

        eval_table = None
        if self.evals:
            entries: dict[str, dict] = {}
            for ev in self.evals:
                entries.setdefault(ev["label"], {"agent": ev["agent"], "label": ev["label"], "runs": []})
                entries[ev["label"]]["runs"].append(ev["summary"])
            names = [e["agent"] for e in entries.values()]
            rows = []
            for e in entries.values():
                e["name"] = e["agent"] if names.count(e["agent"]) == 1 else f"{e['agent']} ({e['label']})"
                rows.append({"name": e["name"], "values": compare.row(e), "types": compare.alfworld_types(e)})
            headers = [h for h in [c[0] for c in compare.COLUMNS] + ["Average"]
                       if any(r["values"][h] is not None for r in rows)]
            eval_table = {"headers": headers, "rows": rows,
                          "types": sorted({t for r in rows for t in r["types"]})}
        labelled = [(s["label"], {"env": s.get("env"), "split": s.get("split"), "protocol": s.get("protocol")})
                    for s in self.sources if s["kind"] in ("gen", "eval")]
        found = mismatches(labelled)
        for m in found:
            m["text"] = describe(m["parts"])
            m["parts"] = [[k, a, b] for k, a, b in m["parts"]]
        return {
            "sources": self.sources, "tables": self.tables, "evals": [e["summary"] | {"label": e["label"]}
                                                                      for e in self.evals],
            "eval_table": eval_table, "protocol_mismatches": found,
            "codes": {k: v.values for k, v in self.codes.items()},
            "pairs": self.pairs, "episodes": self.episodes,
            "chunk": CHUNK, "roles": ROLES,
        }


def collect(paths: list[Path]) -> tuple[dict, list[str], list[str]]:
    """(payload, pair text blocks, episode text blocks) for the given inputs."""
    c = Collector()
    try:
        for p in paths:
            c.add_path(Path(p))
        payload = c.payload()
        return payload, c.pair_chunks.blocks, c.episode_chunks.blocks
    finally:
        c.pool.shutdown(cancel_futures=True)
