"""Do two InterCode-SQL backends give the same results? (e.g. local MariaDB vs MariaDB in Docker)

Replays every executed turn of InterCode's recorded GPT-4 runs on both backends side by side and
compares the observations turn by turn, then runs every gold query on both. A difference is
"tie order" when the rows are the same multiset, "tied row picked" when the query has ORDER BY ...
LIMIT (which row of a tie is kept is up to the server), else "different".

  python benchmarks/sql_backend_parity.py --a local --b docker [--limit N]
  python benchmarks/sql_backend_parity.py --a docker --b docker --image-b mysql:8.0   # needs a registry
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter

from hpl_envs import make_env
from hpl_envs.data import require

RETRY = ("Format your SQL command", "No sql code", "blocked")
LIMITED = re.compile(r"ORDER\s+BY.*\bLIMIT\b", re.IGNORECASE | re.DOTALL)


def compare(action: str, a, b) -> str:
    if a == b:
        return "identical"
    if isinstance(a, list) and isinstance(b, list) and sorted(map(repr, a)) == sorted(map(repr, b)):
        return "tie order"
    if isinstance(a, list) and isinstance(b, list) and LIMITED.search(action):
        return "tied row picked"
    return "different"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", default="local")
    ap.add_argument("--b", default="docker")
    ap.add_argument("--image-a", default=None)
    ap.add_argument("--image-b", default=None)
    ap.add_argument("--file", default="gpt-4/ic_sql_multiturn_gpt-4_10_turns.json")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    runs = json.loads(require(f"expert/intercode_sql_results/{args.file}", "intercode-sql").read_text())
    envs = []
    for backend, image in ((args.a, args.image_a), (args.b, args.image_b)):
        start = time.monotonic()
        env = make_env("intercode-sql", backend=backend, image=image, max_turns=100)
        env.warm_caches()
        print(f"{backend}{' ' + image if image else ''}: server ready in {time.monotonic() - start:.1f} s "
              f"({env.shared.info.flavor})")
        envs.append(env)
    turns: Counter = Counter()
    examples: dict[str, list] = {}
    for key in sorted(runs, key=int)[: args.limit]:
        for env in envs:
            env.reset(options={"task_id": key})
        for action in runs[key]["turn_history"]["actions"]:
            if action in RETRY or action.lower() in ("skip", "submit"):
                continue
            obs = [env.step(action)[0] for env in envs]
            verdict = compare(action, *[env.get_state().observation for env in envs])
            turns[verdict] += 1
            if verdict != "identical":
                examples.setdefault(verdict, []).append((key, action[:100], obs[0][:100], obs[1][:100]))
    golds: Counter = Counter()
    for key in sorted(runs, key=int)[: args.limit]:
        task = envs[0].task(key)
        results = []
        for env in envs:
            env.reset(options={"task_id": key})
            results.append(env.gold_result(task))
        golds[compare(task.gold, *results)] += 1
    total = sum(turns.values())
    print(f"{args.a} vs {args.b}: {total} replayed turns: " + ", ".join(f"{k} {v}" for k, v in turns.most_common()))
    print(f"  gold results of {sum(golds.values())} tasks: " + ", ".join(f"{k} {v}" for k, v in golds.most_common()))
    for verdict, items in examples.items():
        for ex in items[:3]:
            print(f"  {verdict}: task {ex[0]} {ex[1]!r}\n    {args.a}: {ex[2]!r}\n    {args.b}: {ex[3]!r}")
    for env in envs:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
