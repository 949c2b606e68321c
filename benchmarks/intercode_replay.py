"""Replay InterCode's recorded GPT-4 runs on hpl's InterCode-SQL env and compare.

For every recorded turn: the same action is executed (turns where the policy produced no SQL are
skipped, as InterCode's loop did), the observation is compared with the recorded one, and the
reward that ``submit`` would give (InterCode evaluated every turn) with the recorded reward.
Mismatches are classified by cause.

  python benchmarks/intercode_replay.py [--file gpt-4/ic_sql_multiturn_gpt-4_10_turns.json] [--limit N]
      [--backend local|url|docker] [--url mysql://...] [--image mysql:8.0]

MySQL 8 fidelity (the server InterCode recorded on; needs a registry for the image):
  python benchmarks/intercode_replay.py --backend docker --image mysql:8.0 --raw-mariadb
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

from hpl_envs import make_env
from hpl_envs.data import require

RETRY = ("Format your SQL command", "No sql code", "blocked")


def classify(action: str, recorded: str, ours: str) -> str:
    if ours.startswith("Error executing query: ") and any(w in ours for w in ("not allowed", "SELECT ... INTO")):
        return "refused by the read-only sandbox (InterCode executed it)"
    if re.match(r"\s*(DESC|DESCRIBE|SHOW\s+(FULL\s+)?COLUMNS|SHOW\s+CREATE)", action, re.IGNORECASE):
        return "schema listing differs (MariaDB vs MySQL 8 types/defaults, bytes vs str)"
    if recorded.startswith("Error executing query") and ours.startswith("Error executing query"):
        return "error message wording (MariaDB vs MySQL 8)"
    if recorded.startswith("Error executing query") or ours.startswith("Error executing query"):
        return "one server accepted the query, the other rejected it (dialect)"
    if sorted(recorded) == sorted(ours) or set(recorded.split("), (")) == set(ours.split("), (")):
        return "same rows, different order (ties / no ORDER BY)"
    return "different values (dialect, types or float formatting)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", default="gpt-4/ic_sql_multiturn_gpt-4_10_turns.json")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--show", type=int, default=3, help="examples printed per cause")
    ap.add_argument("--no-tau", action="store_true", help="score as the recordings were scored (IoU only)")
    ap.add_argument("--raw-mariadb", action="store_true", help="turn off the MySQL 8 compatibility layer")
    ap.add_argument("--backend", choices=["local", "url", "docker"], default=None, help="SQL server backend")
    ap.add_argument("--url", default=None, help="backend url: mysql://user:pass@host:port")
    ap.add_argument("--image", default=None, help="backend docker: base image, e.g. mysql:8.0")
    ap.add_argument("--describe-types", choices=("bytes", "str"), default=None,
                    help="DESCRIBE type column as bytes or str (default: as the recording shows it, "
                         "str for the GPT-3.5 runs, bytes for the GPT-4 runs)")
    args = ap.parse_args(argv)
    describe_types = args.describe_types or ("str" if args.file.startswith("gpt-3.5") else "bytes")
    path = require(f"expert/intercode_sql_results/{args.file}", "intercode-sql")
    runs = json.loads(path.read_text())
    env = make_env("intercode-sql", max_turns=100, kendall_tau=not args.no_tau, mysql8_compat=not args.raw_mariadb,
                   backend=args.backend, url=args.url, image=args.image, describe_types=describe_types)
    obs_total = obs_match = rew_total = rew_match = 0
    ep_total = ep_match = 0
    causes: Counter = Counter()
    reward_causes: Counter = Counter()
    examples: dict[str, list] = {}
    # ReAct runs (GPT-3.5) wrap SQL as execute[...] and log a reward only at submit
    react = any(a.startswith("execute[") for run in runs.values() for a in run["turn_history"]["actions"])
    for key in sorted(runs, key=int)[: args.limit]:
        run = runs[key]
        th = run["turn_history"]
        env.reset(options={"task_id": key})
        episode_ok = True
        for action, rec_obs, rec_rew in zip(th["actions"], th["observations"], th["rewards"]):
            if react and action.startswith("submit"):
                reward, _ = env.evaluate()
                rew_total += 1
                rew_match += reward == rec_rew
                episode_ok = episode_ok and reward == rec_rew
                continue
            if action in RETRY or rec_obs.startswith(RETRY) or action.lower() in ("skip", "submit"):
                continue
            if react:
                if not (action.startswith("execute[") and action.endswith("]")):
                    continue
                action = action[len("execute["):-1]
            obs, *_ = env.step(action)
            obs_total += 1
            if obs == rec_obs:
                obs_match += 1
            else:
                cause = classify(action, rec_obs, obs)
                causes[cause] += 1
                examples.setdefault(cause, []).append((key, action[:120], rec_obs[:160], obs[:160]))
            if react:
                continue
            reward, _ = env.evaluate()
            rew_total += 1
            if reward == rec_rew:
                rew_match += 1
            else:
                episode_ok = False
                reward_causes["same observation, different gold result" if obs == rec_obs
                              else classify(action, rec_obs, obs)] += 1
        ep_total += 1
        ep_match += episode_ok and max(th["rewards"] or [0]) == run["summary"]["max_reward"]
    print(f"{path.name}: {ep_total} episodes, {obs_total} executed turns")
    print(f"  observations identical: {obs_match}/{obs_total} = {obs_match / max(obs_total, 1):.4f}")
    scored = "submit" if react else "per-turn"
    print(f"  {scored} rewards identical: {rew_match}/{rew_total} = {rew_match / max(rew_total, 1):.4f}")
    print(f"  episodes with every reward identical: {ep_match}/{ep_total} = {ep_match / max(ep_total, 1):.4f}")
    print("  observation mismatches by cause:")
    for cause, n in causes.most_common():
        print(f"    {n:5d}  {cause}")
        for ex in examples[cause][: args.show]:
            print(f"           task {ex[0]}: {ex[1]!r}\n             recorded: {ex[2]!r}\n             hpl:      {ex[3]!r}")
    print("  reward mismatches by cause:")
    for cause, n in reward_causes.most_common():
        print(f"    {n:5d}  {cause}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
