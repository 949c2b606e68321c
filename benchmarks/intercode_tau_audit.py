"""Were InterCode's published SQL runs scored with Kendall's tau? Measured per recording file.

For every recorded turn whose observation is a result set, the recorded rows are scored against
the gold result twice, with InterCode's code (IoU x tau, rounded) and with the plain IoU. Turns
where the two differ decide the question; each goes to ``tau`` or ``IoU only`` by which one equals
the recorded reward (``neither``: e.g. the gold query orders tied rows differently on MariaDB).
Runs that log a reward only at ``submit`` (the GPT-3.5 ReAct runs: other turns carry a 0 that was
never computed) are read at their submit turns; read naively, a few of those 0s coincide with a
tau-scaled reward that rounds to 0 or with a negative tau and make the file look mixed, which the
``--all-turns`` flag shows. ReAct observations show at most 25-30 rows while the reward used the
full result, so such turns can match neither scoring.

  python benchmarks/intercode_tau_audit.py [--file gpt-4/ic_sql_multiturn_gpt-4_10_turns.json ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections import Counter
from decimal import Decimal

from hpl_envs import make_env
from hpl_envs.data import require
from hpl_envs.intercode_sql.reward import sql_reward

FILES = ("gpt-4/ic_sql_multiturn_gpt-4_10_turns.json", "gpt-4/ic_sql_multiturn_gpt-4_1_turns.json",
         "gpt-3.5/ic_sql_react_10_turns.json")
_ROW_NAMES = {"Decimal": Decimal, "datetime": datetime, "None": None, "__builtins__": {}}


def recorded_rows(observation: str) -> list | None:
    """The rows a recorded observation shows (``str(list_of_tuples)``), or None for anything else."""
    if not observation.startswith("["):
        return None
    try:
        rows = eval(observation, dict(_ROW_NAMES))  # noqa: S307 - repr of tuples of literals, no builtins
    except Exception:  # noqa: BLE001
        return None
    return rows if isinstance(rows, list) else None


def audit(env, path, all_turns: bool = False) -> tuple[Counter, dict[str, list[str]]]:
    runs = json.loads(path.read_text())
    counts: Counter = Counter()
    tasks: dict[str, list[str]] = {"tau": [], "iou": []}
    submit_only = not all_turns and any(a.startswith("submit") for run in runs.values() for a in run["turn_history"]["actions"])
    for key in sorted(runs, key=int):
        th = runs[key]["turn_history"]
        gold = env.gold_result(env.task(key))
        for action, obs, rec in zip(th["actions"], th["observations"], th["rewards"]):
            if submit_only and not action.startswith("submit"):
                continue
            rows = recorded_rows(obs)
            if rows is None:
                continue
            with_tau = sql_reward(rows, gold, kendall_tau=True)[0]
            iou = sql_reward(rows, gold, kendall_tau=False)[0]
            if with_tau == iou:
                counts["same either way"] += 1
                continue
            verdict = "tau" if rec == with_tau else "iou" if rec == iou else "neither"
            counts[verdict] += 1
            if verdict in tasks and key not in tasks[verdict]:
                tasks[verdict].append(key)
    return counts, tasks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", action="append", help="recording under expert/intercode_sql_results/ (repeatable)")
    ap.add_argument("--all-turns", action="store_true", help="also read turns a ReAct run never scored")
    args = ap.parse_args(argv)
    env = make_env("intercode-sql", max_turns=100)
    env.reset(options={"task_id": "0"})
    for name in args.file or FILES:
        path = require(f"expert/intercode_sql_results/{name}", "intercode-sql")
        counts, tasks = audit(env, path, args.all_turns)
        decisive = counts["tau"] + counts["iou"] + counts["neither"]
        print(f"{name}: {sum(counts.values())} result-set turns, {decisive} where tau changes the reward: "
              f"{counts['tau']} scored with tau, {counts['iou']} without, {counts['neither']} neither")
        for verdict in ("tau", "iou"):
            if tasks[verdict]:
                print(f"  tasks with turns scored {'with tau' if verdict == 'tau' else 'without tau'} "
                      f"({len(tasks[verdict])}): {', '.join(tasks[verdict][:40])}{' ...' if len(tasks[verdict]) > 40 else ''}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
