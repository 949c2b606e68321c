"""Monte-Carlo labelling cost: replaying prefixes from reset (ETO/IPR) vs restoring snapshots (hpl)
vs snapshots + rollout reuse + adaptive MC.

  python benchmarks/bench_gen.py [--env webshop] [--limit 20] [--rollouts 5]

Builds the same step- and group-level pairs on the same tasks and seeds: (a) with an env whose
``set_state`` resets and replays the action prefix, as the anchors do for every rollout; (b) with
hpl's snapshot restore (expert values reused across levels in both); (c) as (b) with adaptive MC
(a pair stops sampling once a Hoeffding bound settles the sign of ΔR). Prints wall time, env steps
(including replayed ones), policy actions (the LLM calls an LLM policy would make), rollouts, and
label agreement: (a) vs (b) must be identical; (c) vs (b): pairs kept by both, and same ΔR bucket.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

os.environ.setdefault("OMP_NUM_THREADS", "1")


class ReplayEnv:
    """Wraps an hpl env: snapshots are action prefixes, restored by reset + replay."""

    def __init__(self, env) -> None:
        self.env = env
        self.replayed_steps = 0
        self._task = None
        self._actions: list[str] = []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, *, seed=None, options=None):
        self._task = options["task_id"]
        self._actions = []
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        self._actions.append(action)
        return self.env.step(action)

    def get_state(self):
        return (self._task, list(self._actions))

    def set_state(self, state):
        task, actions = state
        self.env.reset(options={"task_id": task})
        for a in actions:
            self.env.step(a)
        self.replayed_steps += len(actions)
        self._task, self._actions = task, list(actions)


def build(env, env_name, tasks, rollouts, seed, adaptive=False):
    from hpl_data.mc import expert_pass, label_task, segment

    counters: Counter = Counter()
    rows = []
    t0 = time.perf_counter()
    for tid in tasks:
        ex = expert_pass(env, env_name, "oracle", tid, seed)
        groups = segment("fixed-k", 3, len(ex["steps"]), None, None)
        steps, grps = label_task(env, env_name, "train", ex, policy="heuristic", expert="oracle", rollouts=rollouts,
                                 seed=seed, levels={"step", "group"}, groups=groups, segmenter="fixed-k:3",
                                 prompts="default", counters=counters, adaptive=adaptive)
        rows += steps + grps
    return rows, counters, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="webshop")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--rollouts", type=int, default=5)
    args = ap.parse_args(argv)
    from hpl_envs import make_env

    env = make_env(args.env)
    tasks = env.task_ids("train")[: args.limit]
    env.warm_caches()
    replay = ReplayEnv(env)
    rows_a, c_a, wall_a = build(replay, args.env, tasks, args.rollouts, 0)
    rows_b, c_b, wall_b = build(env, args.env, tasks, args.rollouts, 0)
    rows_c, c_c, wall_c = build(env, args.env, tasks, args.rollouts, 0, adaptive=True)
    steps_a = c_a["env_steps"] + replay.replayed_steps
    key = lambda r: (r["task_id"], r["level"], r["group_start"])  # noqa: E731
    a = {key(r): (r["chosen_reward"], r["rejected_reward"]) for r in rows_a}
    b = {key(r): (r["chosen_reward"], r["rejected_reward"]) for r in rows_b}
    agree = sum(a.get(k) == v for k, v in b.items())
    print(f"{args.env}: {len(tasks)} tasks, M={args.rollouts}, {len(rows_b)} step+group pairs, "
          f"{c_b['rollouts']} rollouts, {c_b['values_reused']} expert values reused across levels")
    print(f"  (a) replay from reset: {wall_a:.2f}s, {steps_a} env steps ({replay.replayed_steps} replayed)")
    print(f"  (b) snapshot restore:  {wall_b:.2f}s, {c_b['env_steps']} env steps ({c_b['restores']} restores)")
    print(f"  -> {wall_a / wall_b:.2f}x faster, {steps_a / max(c_b['env_steps'], 1):.2f}x fewer env steps; "
          f"labels identical for {agree}/{len(b)} pairs (pairs in a: {len(a)})")
    c = {key(r): r for r in rows_c}
    bb = {key(r): r for r in rows_b}
    both = set(c) & set(bb)
    same_bucket = sum(c[k]["bucket"] == bb[k]["bucket"] for k in both)
    print(f"  (c) + adaptive MC:     {wall_c:.2f}s, {c_c['env_steps']} env steps, {c_c['rollouts']} rollouts "
          f"({c_c['rollouts_saved']} saved, {c_c['pairs_settled_early']} pairs settled early)")
    print(f"  -> vs (b): {wall_b / wall_c:.2f}x faster, {c_b['env_steps'] / max(c_c['env_steps'], 1):.2f}x fewer "
          f"env steps (= policy calls), {c_b['rollouts'] / max(c_c['rollouts'], 1):.2f}x fewer rollouts; "
          f"vs (a): {wall_a / wall_c:.2f}x faster")
    print(f"  labels (c) vs (b): {len(both)} pairs in both, {len(bb) - len(both)} only in (b), "
          f"{len(c) - len(both)} only in (c); same ΔR bucket for {same_bucket}/{len(both)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
