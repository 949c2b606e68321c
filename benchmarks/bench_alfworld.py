"""ALFWorld env speed and memory, in one run.

  python benchmarks/bench_alfworld.py [--quick]

Prints: game load time (cold: PDDL translated; warm: translation cached on disk), reset/s of a loaded
game, steps/s on one core, snapshot+restore vs reset+replay at depth 10 and 20 (the baseline
IPR-style Monte Carlo uses), and memory per env with 8 games loaded.
Goals from the issue: >= 100 steps/s per core (anchor: 10-15 reported, 27 measured through
textworld.gym), restore >= 20x faster than replay at depth 10.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    os.environ["HPL_CACHE_DIR"] = tempfile.mkdtemp(prefix="hpl-bench-alf-")  # cold translation cache
    from hpl_envs import make_env

    rss0 = rss_mb()
    env = make_env("alfworld", max_turns=1000, cache_games=8)
    ids = env.task_ids("valid_unseen")
    n_games = 4 if args.quick else 8
    t0 = time.perf_counter()
    for tid in ids[:n_games]:
        env.reset(options={"task_id": tid})
    cold = (time.perf_counter() - t0) / n_games
    print(f"memory: {rss_mb() - rss0:.0f} MB for one env with {n_games} games loaded ({rss_mb():.0f} MB process RSS)")
    env.close()
    t0 = time.perf_counter()
    for tid in ids[:n_games]:
        env.reset(options={"task_id": tid})
    warm = (time.perf_counter() - t0) / n_games
    t0 = time.perf_counter()
    resets = 0
    while time.perf_counter() - t0 < 1.0:
        env.reset(options={"task_id": ids[resets % n_games]})
        resets += 1
    print(f"load a game: {cold:.2f}s cold (PDDL translated), {warm:.3f}s warm (translation cached) | "
          f"reset of a loaded game: {resets / (time.perf_counter() - t0):.0f}/s")

    rng = random.Random(0)
    steps, t_steps = 0, 0.0
    deadline = time.perf_counter() + (3 if args.quick else 10)
    while time.perf_counter() < deadline:
        tid = ids[rng.randrange(n_games)]
        obs, info = env.reset(options={"task_id": tid})
        for _ in range(30):
            a = rng.choice(info["admissible_actions"])
            s = time.perf_counter()
            obs, r, term, trunc, info = env.step(a)
            t_steps += time.perf_counter() - s
            steps += 1
            if term:
                break
    print(f"steps: {steps / t_steps:.0f} steps/s on one core ({1e3 * t_steps / steps:.2f} ms/step, random admissible actions)")

    for depth in (10, 20):
        tid = ids[1]
        obs, info = env.reset(options={"task_id": tid})
        actions = []
        for _ in range(depth):
            a = next((x for x in info["admissible_actions"] if x.startswith("go to") and x not in actions[-2:]),
                     info["admissible_actions"][0])
            obs, r, term, trunc, info = env.step(a)
            actions.append(a)
        target = (obs, tuple(info["admissible_actions"]))
        snap = env.get_state()
        reps = 5 if args.quick else 20
        t0 = time.perf_counter()
        for _ in range(reps):
            env.reset(options={"task_id": tid})
            for a in actions:
                obs, r, term, trunc, info = env.step(a)
        replay = (time.perf_counter() - t0) / reps
        assert (obs, tuple(info["admissible_actions"])) == target
        reps_r = 200
        t0 = time.perf_counter()
        for _ in range(reps_r):
            env.set_state(snap)
        restore = (time.perf_counter() - t0) / reps_r
        assert env.last_restore == "snapshot"
        assert (env._state.observation, tuple(env.admissible_actions())) == target
        print(f"depth {depth}: reset+replay {1e3 * replay:.1f} ms vs snapshot restore {1e3 * restore:.3f} ms "
              f"-> {replay / restore:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
