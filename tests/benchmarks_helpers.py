"""Import the analysis scripts of benchmarks/ from tests."""

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from webshop_oracle_misses import classify  # noqa: E402

from hpl_envs.agents import make_agent, play  # noqa: E402


def classify_misses(env, split):
    agent = make_agent("webshop", "oracle")
    causes, wins, tasks = Counter(), 0, env.task_ids(split)
    for tid in tasks:
        _, reward, info, _ = play(env, agent, tid)
        if reward == 1.0:
            wins += 1
        else:
            causes[classify(env, env.goal(tid), info)] += 1
    return causes, len(tasks), wins
