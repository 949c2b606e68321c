"""Training data from Parquet: hpl-gen outputs or any TRL-style conversational preference table.

Reads ``traj_pairs``, ``step_pairs``, ``group_pairs`` (``prompt``/``chosen``/``rejected`` lists of
{role, content}) and, for behaviour cloning, ``trajectories_expert`` (``messages``) or successful
``trajectories_policy`` rows (RFT). A Parquet file of other origin is taken as trajectory-level
pairs unless it has a ``level`` column. Nothing here imports an env: data flows one way.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hpl_train.curriculum import DELTA_THRESHOLDS, bucket
from hpl_train.packing import Segment, make_segment
from hpl_train.tokenize import (
    AlignmentError,
    TooLongError,
    fit_prompts,
    max_token_chars,
    tokenize_conversation,
    tokenize_pair,
)

PAIR_KINDS = ("traj", "step", "group")
TABLES = {"traj": "traj_pairs", "step": "step_pairs", "group": "group_pairs",
          "expert": "trajectories_expert", "policy": "trajectories_policy"}


class DataError(ValueError):
    """Training data missing or unreadable."""


@dataclass
class TrainData:
    segments: dict[str, list[Segment]] = field(default_factory=dict)  # kind -> segments (bc, traj, step, group)
    skipped: Counter = field(default_factory=Counter)  # (kind, reason) -> count
    truncated: Counter = field(default_factory=Counter)  # kind -> samples whose oldest prompt turns were dropped
    max_row_tokens: int | None = None
    examples: dict[str, str] = field(default_factory=dict)  # kind -> one skipped sample's reason, for the report
    files: list[Path] = field(default_factory=list)
    env: str | None = None

    def report(self) -> str:
        parts = [f"{k}: {len(v)}" for k, v in self.segments.items()]
        lines = ["samples " + ", ".join(parts)]
        for kind, n in sorted(self.truncated.items()):
            lines.append(f"  truncated {n} {kind} sample(s) to max_row_tokens={self.max_row_tokens}: "
                         "dropped their oldest prompt turns (task and completions kept whole)")
        for (kind, reason), n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n} {kind} sample(s): {reason}")
        return "\n".join(lines)

    def metrics(self) -> dict[str, int]:
        """Per kind: samples kept, truncated and skipped (over-length ones also on their own)."""
        out: dict[str, int] = {}
        for kind, segs in self.segments.items():
            out[f"data/samples/{kind}"] = len(segs)
        for kind, n in self.truncated.items():
            out[f"data/truncated/{kind}"] = n
        for (kind, reason), n in self.skipped.items():
            out[f"data/skipped/{kind}"] = out.get(f"data/skipped/{kind}", 0) + n
            if reason.startswith("longer than max_row_tokens"):
                out[f"data/skipped_too_long/{kind}"] = out.get(f"data/skipped_too_long/{kind}", 0) + n
        return out


PAIR_COLUMNS = ("prompt", "chosen", "rejected")
NUMERIC_COLUMNS = ("delta_r", "group_length", "reward")
_CONVERSATION = "a list of {role, content} messages (TRL's conversational format)"


def _read(path: Path, conversations: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a Parquet table whose ``conversations`` columns must exist and hold chat messages:
    a table of the wrong shape is one clear error naming the file, not a traceback mid-way or a
    silently different training run (pairs without ``rejected`` used to train BC only)."""
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for broken files
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from e
    _check_schema(path, table.schema, conversations)
    return table.to_pylist()


def check_tables(paths: list[str]) -> None:
    """Every table :func:`load_train_data` would read exists and has the right columns (schemas
    only: cheap, so the CLI runs it before loading a model)."""
    for kind, files in find_tables(paths).items():
        for f in files:
            try:
                schema = pq.read_schema(f)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for broken files
                raise DataError(f"{f}: not a readable Parquet file ({type(e).__name__}: {e})") from e
            _check_schema(f, schema, ("messages",) if kind in ("expert", "policy") else PAIR_COLUMNS)


def _check_schema(path: Path, schema: pa.Schema, conversations: tuple[str, ...]) -> None:
    for col in conversations:
        if col not in schema.names:
            raise DataError(f"{path}: no {col!r} column; expected columns {', '.join(conversations)}, "
                            f"each {_CONVERSATION}")
        if not _is_conversation(schema.field(col).type):
            raise DataError(f"{path}: column {col!r} holds {schema.field(col).type}, expected {_CONVERSATION}")
    for col in NUMERIC_COLUMNS:
        if col in schema.names:
            t = schema.field(col).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
                raise DataError(f"{path}: column {col!r} holds {t}, expected numbers")


def _is_conversation(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        return False
    item = t.value_type
    return pa.types.is_struct(item) and {"role", "content"} <= {item.field(i).name for i in range(item.num_fields)}


def find_tables(paths: list[str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            hits = [(kind, p / f"{name}.parquet") for kind, name in TABLES.items() if (p / f"{name}.parquet").exists()]
            if not hits:
                raise DataError(f"{p}: no hpl-gen tables ({', '.join(n + '.parquet' for n in TABLES.values())})")
            for kind, f in hits:
                found.setdefault(kind, []).append(f)
        elif p.is_file():
            kind = next((k for k, n in TABLES.items() if p.stem == n), "pairs")
            found.setdefault(kind, []).append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return found


def fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _task_of(row: dict, messages: list[dict]) -> dict:
    """What identifies a sample's task, for splitting off held-out tasks (:mod:`hpl_train.evaluate`)."""
    first_user = next((m.get("content") for m in messages if m.get("role") == "user"), None)
    return {"task_id": row.get("task_id"), "instruction": first_user}


def recorded_curriculum(path: Path) -> dict:
    """The curriculum thresholds hpl-gen recorded in a table's metadata (its env profile's length
    thresholds and the ΔR thresholds it bucketed by); ``{}`` for a table of other origin."""
    try:
        meta = json.loads((pq.read_schema(path).metadata or {}).get(b"hpl", b"{}"))
    except ValueError:
        return {}
    curriculum = meta.get("curriculum") if isinstance(meta, dict) else None
    return curriculum if isinstance(curriculum, dict) else {}


@dataclass
class GroupBuckets:
    """Curriculum buckets (length, ΔR) of group pairs. hpl-gen writes them as columns by the env's
    thresholds and records those in the table's metadata; the trainer keeps no per-env table. The
    columns are used unless the config sets its own thresholds (an ablation); else a pair is
    bucketed by the config's length thresholds or, failing those, the ones its table records."""

    length_thresholds: tuple[int, ...] | None  # the config's override
    delta_thresholds: tuple[float, ...]
    recorded: dict[Path, dict] = field(default_factory=dict)  # table -> recorded_curriculum()

    def of(self, row: dict, path: Path, delta: float) -> tuple[int, int]:
        if path not in self.recorded:
            self.recorded[path] = recorded_curriculum(path)
        recorded = self.recorded[path]
        data_deltas = tuple(recorded.get("delta_thresholds") or DELTA_THRESHOLDS)
        if (self.length_thresholds is None and row.get("length_bucket") and row.get("delta_bucket")
                and self.delta_thresholds == data_deltas):
            return int(row["length_bucket"]), int(row["delta_bucket"])
        thresholds = self.length_thresholds or recorded.get("length_thresholds")
        if not thresholds:
            raise DataError(f"{path}: group pairs without length_bucket, and the table records no length "
                            "thresholds (it is not hpl-gen's); set length_thresholds in the config, e.g. [0, 2, 4]")
        length = int(row.get("group_length") or sum(m["role"] == "assistant" for m in row["chosen"]))
        return bucket(length, delta, tuple(thresholds), self.delta_thresholds)


PairRow = tuple[dict, Path]  # a pair table's row and the table it came from


def _pair_rows(tables: dict[str, list[Path]], skipped: Counter) -> dict[str, list[PairRow]]:
    """Rows of every pair table by level; a plain preference file's rows go by their ``level``."""
    rows_by_kind: dict[str, list[PairRow]] = {k: [] for k in PAIR_KINDS}
    for kind in PAIR_KINDS:
        for f in tables.get(kind, []):
            rows_by_kind[kind] += [(row, f) for row in _read(f, PAIR_COLUMNS)]
    for f in tables.get("pairs", []):
        for row in _read(f, PAIR_COLUMNS):
            level = row.get("level") or "traj"
            if level not in PAIR_KINDS:
                skipped[("pairs", f"unknown level {level!r}")] += 1
                continue
            rows_by_kind[level].append((row, f))
    return rows_by_kind


@dataclass(frozen=True)
class _Fit:
    """The row budget: ``max_row_tokens`` (None: any length) and the longest token's characters."""

    max_row_tokens: int | None
    token_chars: int


def _skip(data: TrainData, kind: str, index: int, error: Exception) -> None:
    data.skipped[(kind, str(error).split(";")[0])] += 1
    data.examples.setdefault(kind, f"row {index}: {error}")


def load_train_data(tokenizer, paths: list[str], *, bc_source: str = "expert", share_prefix: bool = True,
                    env: str | None = None, length_thresholds=None, delta_thresholds=DELTA_THRESHOLDS,
                    kinds: set[str] | None = None, max_row_tokens: int | None = None) -> TrainData:
    """Tokenize every usable sample; count (and keep one example of) every sample that is not.

    With ``max_row_tokens``, a longer sample is truncated or skipped by the rule in
    :mod:`hpl_train.tokenize` (whole oldest prompt turns dropped; task and completions kept) before
    it is tokenised whole, and counted in ``truncated`` / ``skipped``. Group pairs' curriculum
    buckets: :class:`GroupBuckets` (``length_thresholds`` overrides what the data says)."""
    tables = find_tables(paths)
    data = TrainData(files=[f for fs in tables.values() for f in fs], max_row_tokens=max_row_tokens)
    fit = _Fit(max_row_tokens, max_token_chars(tokenizer) if max_row_tokens else 0)
    rows_by_kind = _pair_rows(tables, data.skipped)
    envs = {r.get("env") for rows in rows_by_kind.values() for r, _ in rows if r.get("env")}
    data.env = env or (envs.pop() if len(envs) == 1 else None)
    buckets = GroupBuckets(tuple(length_thresholds) if length_thresholds else None, tuple(delta_thresholds))
    for kind in PAIR_KINDS:
        if kinds is None or kind in kinds:
            data.segments[kind] = _pair_segments(tokenizer, kind, rows_by_kind[kind], data, share_prefix, fit, buckets)
    if kinds is None or "bc" in kinds:
        bc_rows = _bc_rows(tables, bc_source, [r for r, _ in rows_by_kind["traj"]])
        data.segments["bc"] = _bc_segments(tokenizer, bc_rows, data, fit)
    return data


def _pair_segments(tokenizer, kind: str, rows: list[PairRow], data: TrainData, share_prefix: bool, fit: _Fit,
                   buckets: GroupBuckets) -> list[Segment]:
    segs = []
    for i, (row, path) in enumerate(rows):
        try:
            for col in PAIR_COLUMNS:
                if not isinstance(row.get(col), list) or not row[col]:
                    raise AlignmentError(f"column {col!r} is missing or empty")
            seg, dropped = _pair_segment(tokenizer, kind, i, row, share_prefix, fit.max_row_tokens, fit.token_chars)
        except (AlignmentError, TooLongError, KeyError, TypeError) as e:
            _skip(data, kind, i, e)
            continue
        if dropped:
            data.truncated[kind] += 1
        seg.meta.update({"delta_r": float(row.get("delta_r") or 0.0), **_task_of(row, row["prompt"])})
        if kind == "group":
            seg.meta["bucket"] = buckets.of(row, path, seg.meta["delta_r"])
        segs.append(seg)
    return segs


def _bc_rows(tables: dict[str, list[Path]], bc_source: str, traj_rows: list[dict]) -> list[dict]:
    """Trajectories to clone: the expert's, successful policy ones (RFT), or both; for plain
    preference files the chosen side of the trajectory pairs."""
    rows = []
    if bc_source in ("expert", "both"):
        rows += [r for f in tables.get("expert", []) for r in _read(f, ("messages",)) if not r.get("error")]
    if bc_source in ("policy-success", "both"):
        rows += [r for f in tables.get("policy", []) for r in _read(f, ("messages",))
                 if not r.get("error") and (r.get("won") or r.get("reward") == 1.0)]
    if not rows and bc_source == "expert":
        rows = [{"messages": r["prompt"] + r["chosen"]} for r in traj_rows if r.get("prompt")]
    return rows


def _bc_segments(tokenizer, rows: list[dict], data: TrainData, fit: _Fit) -> list[Segment]:
    segs = []
    for i, row in enumerate(rows):
        msgs = row.get("messages") or []
        try:
            conv = _bc_conversation(tokenizer, msgs, fit)
        except (AlignmentError, TooLongError, KeyError, TypeError) as e:
            _skip(data, "bc", i, e)
            continue
        segs.append(make_segment("bc", i, conv, meta=_task_of(row, msgs)))
    return segs


def _bc_conversation(tokenizer, msgs: list[dict], fit: _Fit):
    """A trajectory tokenized whole (it is trained whole or not at all)."""
    limit = fit.max_row_tokens
    if limit and sum(len(str(m.get("content") or "")) for m in msgs) > limit * fit.token_chars:
        raise TooLongError(f"longer than max_row_tokens={limit}; by its length in characters")
    conv = tokenize_conversation(tokenizer, msgs[:1], msgs[1:])
    if not any(conv.trainable):
        raise AlignmentError("no assistant tokens")
    if limit and len(conv.ids) > limit:
        raise TooLongError(f"longer than max_row_tokens={limit}; {len(conv.ids)} tokens "
                           "(a trajectory is trained whole or not at all)")
    return conv


def _pair_segment(tokenizer, kind: str, index: int, row: dict, share_prefix: bool, max_row_tokens: int | None,
                  token_chars: int) -> tuple[Segment, int]:
    """The pair's segment and how many prompt messages were dropped to fit ``max_row_tokens``."""
    prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
    candidates = (fit_prompts(tokenizer, prompt, [chosen, rejected], max_row_tokens, token_chars,
                              prompt_copies=1 if share_prefix else 2) if max_row_tokens else [(prompt, 0)])
    seg = None
    for kept, dropped in candidates:
        c, r = tokenize_pair(tokenizer, kept, chosen, rejected)
        if not any(c.trainable) or not any(r.trainable):
            raise AlignmentError("no assistant tokens in chosen or rejected")
        seg = make_segment(kind, index, c, r, share_prefix=share_prefix, meta={})
        if not max_row_tokens or seg.n_tokens <= max_row_tokens:
            return seg, dropped
    raise TooLongError(f"longer than max_row_tokens={max_row_tokens}; {seg.n_tokens if seg else '?'} tokens "
                       "with every droppable prompt turn dropped")
