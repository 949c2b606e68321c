"""Run the WebShop oracle on a split and classify every purchase that did not score 1.0.

The oracle buys the goal product with exactly the goal options under the price cap, so every
miss is a property of WebShop's reward (or of an option the original cannot click). Causes:

* option-normalisation: a purchased value contains a colour word as a substring ('rectangular'
  -> 'tan') while the goal (name, value) pair is not normalised, so the fuzzy match fails;
* unclickable-option: the goal value contains '[' or ']' (WebShop's action regex cannot click
  it) or shares its text with another option group;
* attribute: a goal attribute is neither fuzzy-matched nor a substring of the product text;
* other: anything else (should not happen).

Usage: python benchmarks/webshop_oracle_misses.py [--split test] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from hpl_envs import make_env
from hpl_envs.agents import make_agent, play
from hpl_envs.webshop.reward import normalize_color


def classify(env, goal, info) -> str:
    purchased = info.get("purchased", {})
    opts = purchased.get("options", {})
    goal_opts = goal.goal_options if isinstance(goal.goal_options, dict) else {}
    if purchased.get("asin") != goal.asin or opts != goal_opts:
        values = list(goal_opts.values())
        if any("[" in v or "]" in v for v in values) or len(set(values)) < len(values):
            return "unclickable-option"
        product = env.shared.catalog.by_asin(goal.asin)
        all_values = [v for vs in product.options.values() for v in vs]
        if any(all_values.count(v) > 1 for v in values):
            return "unclickable-option"
        return "other (oracle did not buy the exact goal)"
    parts = info.get("reward_parts", {})
    if parts.get("r_option", 1.0) < 1.0:
        if any(normalize_color(v) != v for v in opts.values()):
            return "option-normalisation"
        return "option-other"
    if parts.get("r_att", 1.0) < 1.0:
        return "attribute"
    return "other"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    env = make_env("webshop")
    agent = make_agent("webshop", "oracle")
    causes: Counter = Counter()
    misses = []
    tasks = env.task_ids(args.split)
    with_options = 0
    for tid in tasks:
        _, reward, info, _ = play(env, agent, tid)
        goal = env.goal(tid)
        with_options += bool(goal.goal_options)
        if reward != 1.0:
            cause = classify(env, goal, info)
            causes[cause] += 1
            misses.append({"task_id": tid, "reward": reward, "cause": cause, "goal_options": goal.goal_options,
                           "purchased": info.get("purchased"), "reward_parts": info.get("reward_parts")})
    n = len(tasks)
    print(f"split={args.split} tasks={n} reward==1.0: {n - len(misses)}/{n} = {(n - len(misses)) / n:.4f}")
    print(f"goals with options: {with_options}; exact purchases scoring 1.0 among them: "
          f"{with_options - len(misses)}/{with_options} = {(with_options - len(misses)) / max(with_options, 1):.4f}")
    for cause, k in causes.most_common():
        print(f"  {cause}: {k}")
    for m in misses[:5]:
        print("  e.g.", json.dumps({k: m[k] for k in ("task_id", "reward", "cause", "goal_options")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "tasks": n, "causes": dict(causes), "misses": misses}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
