"""Parquet tables of hpl datasets: schemas, atomic writes, file metadata."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hpl_data.storage import remove_stale_temp_files, replacing

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

TRAJECTORIES = pa.schema([
    ("env", pa.string()), ("split", pa.string()), ("task_id", pa.string()), ("task_type", pa.string()),
    ("instruction", pa.string()), ("role", pa.string()), ("agent", pa.string()), ("seed", pa.int64()),
    ("reward", pa.float64()), ("won", pa.bool_()), ("n_steps", pa.int32()), ("truncated", pa.bool_()),
    ("error", pa.string()), ("stop_reason", pa.string()), ("messages", MESSAGES), ("actions", pa.list_(pa.string())),
    ("observations", pa.list_(pa.string())), ("action_valid", pa.list_(pa.bool_())),
    ("logprobs", pa.list_(pa.float64())), ("entropies", pa.list_(pa.float64())),  # per step; null for agents
])

TRAJ_PAIRS = pa.schema([
    ("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
    ("env", pa.string()), ("split", pa.string()), ("task_id", pa.string()), ("task_type", pa.string()),
    ("level", pa.string()), ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()),
    ("delta_r", pa.float64()), ("policy_id", pa.string()), ("expert_id", pa.string()), ("seed", pa.int64()),
])


MC_PAIRS = pa.schema([
    ("prompt", MESSAGES), ("chosen", MESSAGES), ("rejected", MESSAGES),
    ("env", pa.string()), ("split", pa.string()), ("task_id", pa.string()), ("task_type", pa.string()),
    ("level", pa.string()), ("group_start", pa.int32()), ("group_length", pa.int32()),
    ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()), ("n_rollouts", pa.int32()),
    ("chosen_std", pa.float64()), ("rejected_std", pa.float64()), ("delta_r", pa.float64()),
    ("length_bucket", pa.int8()), ("delta_bucket", pa.int8()), ("bucket", pa.string()), ("segmenter", pa.string()),
    ("policy_id", pa.string()), ("expert_id", pa.string()), ("seed", pa.int64()),
    # the individual MC rollout outcomes behind each side's mean (empty: an exact, finished-episode outcome)
    ("chosen_outcomes", pa.list_(pa.float64())), ("rejected_outcomes", pa.list_(pa.float64())),
])


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("hpl", "pyarrow", "gymnasium", "bm25s", "spacy", "thefuzz", "torch", "transformers", "vllm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build_table(rows: list[dict], schema: pa.Schema, metadata: dict[str, Any]) -> pa.Table:
    """Rows as an Arrow table with the run's JSON metadata (and the protocol on its own key)."""
    table = pa.Table.from_pylist(rows, schema=schema)
    meta = {b"hpl": json.dumps(metadata, default=str).encode()}
    protocol = metadata.get("protocol") or metadata.get("summary", {}).get("protocol")
    if protocol:  # also on its own key, so a reader gets it without parsing the rest
        meta[b"hpl.protocol"] = json.dumps(protocol, default=str).encode()
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})


def write_table(rows: list[dict], schema: pa.Schema, path: Path, metadata: dict[str, Any]) -> Path:
    """Write rows as Parquet atomically (temp file + fsync + rename) with JSON metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = build_table(rows, schema, metadata)
    with replacing(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    remove_stale_temp_files(path.parent, f".{path.name}.*.tmp")  # left by a writer killed mid-write
    return path


def read_metadata(path: Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"hpl", b"{}"))


def read_protocol(path: Path) -> dict | None:
    """The protocol fingerprint (``{"hash", "parts"}``) a file was written under, if recorded."""
    raw = (pq.read_schema(path).metadata or {}).get(b"hpl.protocol")
    return json.loads(raw) if raw else None
