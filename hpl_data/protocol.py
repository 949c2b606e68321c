"""Protocol fingerprint: what exactly produced a result.

Numbers in this field often fail to reproduce because the task panel silently differed (WebShop
goals behind the same index, ALFWorld game files, a reward variant). Every ``hpl-eval`` summary,
``hpl-gen`` manifest and Parquet file carries ``protocol = {"hash": <12 hex>, "parts": {...}}``:
env name and version, the split and a digest of its task-id list, max turns, and what the env
itself reports through ``protocol_parts(task_ids)`` (data file digests, reward options, spaCy
pipeline, alfworld/textworld versions, SQL server version). Equal hashes mean equal protocols;
:func:`differences` names the parts that differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_CHARS = 12


def digest_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def env_parts(env: Any, env_name: str, split: str, task_ids: list[str]) -> dict[str, Any]:
    """Generic parts plus the env's own ``protocol_parts`` (envs without one add nothing)."""
    import hpl_envs
    from hpl_envs.registry import ENVS

    gym_id = ENVS.get(env_name, {}).get("gym_id", env_name)
    parts: dict[str, Any] = {
        "env": env_name,
        "env_version": f"{gym_id} (hpl_envs {hpl_envs.__version__})",
        "split": split,
        "task_count": len(task_ids),
        "task_ids_sha256": digest_json(list(task_ids))[:16],
        "max_turns": getattr(env, "max_turns", None),
    }
    own = getattr(env, "protocol_parts", None)
    if callable(own):
        parts.update(own(list(task_ids)))
    return parts


def fingerprint(parts: dict[str, Any]) -> dict[str, Any]:
    return {"hash": digest_json(parts)[:HASH_CHARS], "parts": parts}


def compute(env_name: str, env_kwargs: dict | None, split: str, task_ids: list[str]) -> dict[str, Any]:
    """The protocol of running ``task_ids`` of ``split`` on ``make_env(env_name, **env_kwargs)``."""
    from hpl_envs import make_env

    env = make_env(env_name, **(env_kwargs or {}))
    try:
        return fingerprint(env_parts(env, env_name, split, task_ids))
    finally:
        env.close()


def flatten(parts: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"reward_options": {"kendall_tau": True}}`` -> ``{"reward_options.kendall_tau": True}``."""
    out: dict[str, Any] = {}
    for k, v in parts.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def differences(a: dict | None, b: dict | None) -> list[tuple[str, Any, Any]]:
    """[(part, value in a, value in b)] of two protocols (``None`` protocol: one ``protocol`` row)."""
    if not a or not b:
        return [] if a == b else [("protocol", a and a.get("hash"), b and b.get("hash"))]
    if a.get("hash") == b.get("hash"):
        return []
    fa, fb = flatten(a.get("parts", {})), flatten(b.get("parts", {}))
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def describe(diffs: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    """One line: ``fix_option_normalisation: False vs True; ...``."""
    text = "; ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in diffs[:limit])
    return text + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def mismatches(runs: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """Runs of the same env and split whose protocols differ from the first such run.

    ``runs``: [(label, summary)]; returns [{env, split, reference, run, parts: [(part, a, b)]}]."""
    first: dict[tuple[str, str], tuple[str, dict | None]] = {}
    out = []
    for label, s in runs:
        key = (s.get("env", "?"), s.get("split", "?"))
        if key not in first:
            first[key] = (label, s.get("protocol"))
            continue
        ref_label, ref = first[key]
        diffs = differences(ref, s.get("protocol"))
        if diffs:
            out.append({"env": key[0], "split": key[1], "reference": ref_label, "run": label, "parts": diffs})
    return out
