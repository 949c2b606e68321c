"""A reference-policy agent for tests: the built-in heuristic agent, except that once Monte-Carlo
labelling has begun (the run's policy table exists) every ``act`` waits until the file
``$HPL_TEST_GATE`` exists, announcing that it waits with ``$HPL_TEST_GATE.waiting``. A test can
then do something (kill a node) while MC work is certainly pending on every worker."""

import os
import time
from pathlib import Path

from hpl_envs.agents import make_agent


class GatedAgent:
    def __init__(self, env_name: str, seed: int) -> None:
        self.inner = make_agent(env_name, "heuristic", seed=seed)

    def act(self, observation, info):
        out, gate = os.environ.get("HPL_TEST_GEN_OUT"), os.environ.get("HPL_TEST_GATE")
        if out and gate and (Path(out) / "trajectories_policy.parquet").exists():
            Path(gate + ".waiting").touch()
            deadline = time.time() + 120
            while not Path(gate).exists() and time.time() < deadline:
                time.sleep(0.05)
        return self.inner.act(observation, info)

    def __getattr__(self, name):  # name, reset, ... of the wrapped agent (not while unpickling)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def make(env_name: str, seed: int = 0) -> GatedAgent:
    return GatedAgent(env_name, seed)
