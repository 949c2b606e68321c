"""Built-in agents: ``oracle`` (privileged, reaches reward 1), ``heuristic`` (a stochastic
baseline that sees only what a model would see), ``random`` (uniform over admissible actions).

An agent is anything with ``reset(env, observation, info)`` and ``act(observation, info) -> str``.
``reset`` receives the unwrapped env so an oracle can read privileged task data; the other
agents must use only ``observation`` and ``info``.
"""

from __future__ import annotations

import random
import re
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Agent(Protocol):
    name: str

    def reset(self, env: Any, observation: str, info: dict) -> None: ...

    def act(self, observation: str, info: dict) -> str: ...


class RandomAgent:
    """Uniform over ``info['admissible_actions']``; fills ``<keywords>``-style templates with
    random words of the instruction."""

    name = "random"

    def __init__(self, seed: int = 0, **_: Any) -> None:
        self.rng = random.Random(seed)

    def reset(self, env: Any, observation: str, info: dict) -> None:
        self.words = re.findall(r"[\w'-]+", info.get("instruction") or observation) or ["item"]

    def act(self, observation: str, info: dict) -> str:
        actions = info.get("admissible_actions") or []
        if not actions:
            return "noop"
        action = self.rng.choice(actions)
        if "<" in action and ">" in action and action.endswith(">]"):
            k = self.rng.randint(1, min(5, len(self.words)))
            action = re.sub(r"<[^<>]*>", " ".join(self.rng.sample(self.words, k)), action)
        return action


def play(env: Any, agent: Agent, task_id: str) -> tuple[str, float, dict, list[str]]:
    """Run one episode to its end: (final observation, final reward, final info, actions)."""
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    actions: list[str] = []
    reward, done = 0.0, False
    while not done:
        actions.append(agent.act(obs, info))
        obs, reward, terminated, truncated, info = env.step(actions[-1])
        done = terminated or truncated
    return obs, float(reward), info, actions


def make_agent(env_name: str, agent: str, seed: int = 0, **kwargs: Any) -> Agent:
    """A built-in agent by name for an env."""
    if agent == "random":
        return RandomAgent(seed=seed, **kwargs)
    if env_name == "webshop":
        from hpl_envs.webshop import agents as ws

        table = {"oracle": ws.WebShopOracle, "heuristic": ws.WebShopHeuristic}
    elif env_name == "intercode-sql":
        from hpl_envs.intercode_sql import agents as sql

        table = {"oracle": sql.SqlOracle, "heuristic": sql.SqlHeuristic}
    elif env_name == "alfworld":
        from hpl_envs.alfworld import agents as alf

        table = {"oracle": alf.AlfWorldOracle, "heuristic": alf.AlfWorldHeuristic}
    else:
        table = {}
    if agent not in table:
        raise ValueError(f"no built-in agent {agent!r} for env {env_name!r}; "
                         f"choose from {sorted([*table, 'random'])}")
    return table[agent](seed=seed, **kwargs)
