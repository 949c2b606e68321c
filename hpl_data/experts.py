"""Expert trajectories from files, replayed through the env as an agent (``file:PATH``).

Formats read:

* InterCode results JSON (``{task_id: {"turn_history": {"actions", "observations", ["thoughts"]}}}``),
  e.g. the published GPT-4 / GPT-3.5 InterCode-SQL runs. Turns InterCode answered itself without
  executing (``Format your SQL command ...``, ``No sql code``, ``blocked``) are dropped.
* ETO / IPR conversation JSON (``[{"id" | "game_file", "conversations": [{"from": "human"|"gpt",
  "value"}]}]``, or ``role``/``content`` messages): assistant turns are parsed with ``parse_react``
  into thought and action; the first user turn (instruction + example) is not needed.
* hpl's own ``trajectories_*.parquet`` (``task_id``, ``actions``, assistant ``messages``).

Replay is exact for these deterministic envs, so the states of a recorded trajectory are rebuilt
from its actions; the outcome is whatever the env says, and callers filter on it (the paper keeps
reward 1.0 for ALFWorld/SQL and >= 0.8 for WebShop).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from hpl_envs.react import parse_react
from hpl_envs.registry import PROFILES, profile

INTERCODE_NOT_EXECUTED = ("Format your SQL command", "No sql code", "blocked")
RECORD_ID_PREFIXES = tuple(prefix for p in PROFILES.values() for prefix in p.record_id_prefixes)


def keep_expert(env_name: str, reward: float) -> bool:
    """The paper's filter on expert (teacher) trajectories (the bar is in the env's profile)."""
    return reward >= profile(env_name).expert_min_reward


def _unwrap_execute(action: str) -> str:
    """InterCode's ReAct runs record ``execute[SQL]`` (sometimes unclosed, or followed by a
    hallucinated ``Observation``); the env takes the SQL itself."""
    a = action.strip()
    if not a.startswith("execute["):
        return action
    inner = a[len("execute["):].split("\nObservation")[0].strip()
    return inner[:-1].rstrip() if inner.endswith("]") else inner


def _task_key(item: dict) -> str | None:
    if item.get("game_file"):  # ETO ALFWorld: .../json_2.1.1/<split>/<task>/<trial>/game.tw-pddl
        parts = Path(str(item["game_file"])).parts
        return "/".join(parts[-4:-1]) if len(parts) >= 4 else None
    key = item.get("id", item.get("task_id"))
    if key is None:
        return None
    key = str(key)
    for prefix in RECORD_ID_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


@lru_cache(maxsize=8)
def _read_uri_table(uri: str):
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(uri)
    return pq.read_table(path, filesystem=fs)


Steps = list[tuple[str, str]]  # [(thought, action)] of one recorded trajectory


def load_expert_file(path: str, multiline: bool = False) -> dict[str, Steps]:
    """task id -> [(thought, action)] from any supported file (a Parquet table may also be a
    ``pyarrow.fs`` URI: hpl-gen's own expert table on a shared ``--out``)."""
    from hpl_data.storage import is_uri

    p = Path(path)
    if not is_uri(path) and not p.exists():
        raise ValueError(f"expert file {p} does not exist")
    if p.suffix == ".parquet" or is_uri(path):
        import pyarrow.parquet as pq

        return _from_trajectories_table(pq.read_table(p) if not is_uri(path) else _read_uri_table(path), multiline)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"expert file {p}: not readable JSON ({e})") from e
    if isinstance(data, dict) and all(isinstance(v, dict) and "turn_history" in v for v in data.values()):
        return _from_intercode_results(data)
    if isinstance(data, list):
        return _from_conversations(data, multiline)
    raise ValueError(f"expert file {p}: not an InterCode results file, an ETO/IPR conversation list or an hpl "
                     "trajectories table")


def _from_trajectories_table(table, multiline: bool) -> dict[str, Steps]:
    """hpl's ``trajectories_*.parquet``: the actions, with the thoughts of its assistant turns."""
    out = {}
    for r in table.to_pylist():
        if r.get("error") or not r.get("actions"):
            continue
        thoughts = [parse_react(m["content"], multiline).thought for m in r.get("messages") or []
                    if m["role"] == "assistant"]
        thoughts = thoughts if len(thoughts) == len(r["actions"]) else [""] * len(r["actions"])
        out[str(r["task_id"])] = list(zip(thoughts, r["actions"]))
    return out


def _from_intercode_results(data: dict) -> dict[str, Steps]:
    """InterCode's results JSON, without the turns InterCode answered itself without executing."""
    out = {}
    for key, run in data.items():
        th = run["turn_history"]
        thoughts = th.get("thoughts") or [""] * len(th["actions"])
        steps = [(t or "", _unwrap_execute(a)) for t, a, o in zip(thoughts, th["actions"], th["observations"])
                 if not (a in INTERCODE_NOT_EXECUTED or str(o).startswith(INTERCODE_NOT_EXECUTED))]
        if steps:
            out[str(run.get("task_id", key))] = steps
    return out


def _from_conversations(data: list, multiline: bool) -> dict[str, Steps]:
    """ETO/IPR conversation lists: each assistant turn parsed into (thought, action)."""
    out = {}
    for item in data:
        msgs = item.get("conversations") or item.get("messages") if isinstance(item, dict) else None
        key = _task_key(item) if isinstance(item, dict) else None
        if not msgs or key is None:
            continue
        steps = []
        for m in msgs:
            role = m.get("role") or ("assistant" if m.get("from") in ("gpt", "assistant") else "user")
            if role == "assistant":
                turn = parse_react(m.get("content", m.get("value", "")), multiline)
                if turn.action:
                    steps.append((turn.thought, turn.action))
        if steps:
            out[key] = steps
    return out


class FileExpert:
    """Replays the recorded actions of the current task; ``last_thought`` carries its thought."""

    def __init__(self, path: str, env_name: str, seed: int = 0) -> None:
        self.name = f"file:{path}"
        self.trajectories = load_expert_file(str(path), profile(env_name).multiline_actions)
        self.path, self.env_name = path, env_name

    def reset(self, env, observation: str, info: dict) -> None:
        task = str(info.get("task_id"))
        if task not in self.trajectories:
            raise ValueError(f"{self.path}: no expert trajectory for task {task!r}")
        self.steps = list(self.trajectories[task])
        self.turn = 0
        self.last_thought = ""

    def act(self, observation: str, info: dict) -> str:
        if self.turn >= len(self.steps):
            self.last_thought = ""
            if profile(self.env_name).multiline_actions:  # InterCode scores the last result when a run stops
                return "submit"
            raise ValueError(f"{self.path}: the recording of task {info.get('task_id')!r} ended before the episode")
        self.last_thought, action = self.steps[self.turn]
        self.turn += 1
        return action
