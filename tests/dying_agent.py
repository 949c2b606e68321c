"""A reference-policy agent for tests: the random agent, except that once Monte-Carlo labelling has
begun (the run's policy table exists) the first call to ``act`` kills its own env worker process
(``HPL_TEST_KILL_MARKER``), or every call raises (``HPL_TEST_AGENT_RAISES``)."""

import os
import signal
from pathlib import Path

from hpl_envs.agents import RandomAgent


class DyingAgent(RandomAgent):
    def act(self, observation, info):
        out, marker = os.environ.get("HPL_TEST_GEN_OUT"), os.environ.get("HPL_TEST_KILL_MARKER")
        if out and os.environ.get("HPL_TEST_AGENT_RAISES") and (Path(out) / "trajectories_policy.parquet").exists():
            raise RuntimeError("this agent fails during MC labelling")
        if out and marker and (Path(out) / "trajectories_policy.parquet").exists():
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # once, in whichever worker gets here first
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().act(observation, info)


def make(env_name: str, seed: int = 0) -> DyingAgent:
    return DyingAgent(seed=seed)
