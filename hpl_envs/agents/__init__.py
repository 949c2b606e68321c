"""Built-in agents: ``oracle`` (privileged, reaches reward 1), ``heuristic`` (a stochastic
baseline that sees only what a model would see), ``random`` (uniform over admissible actions).

An agent is anything with ``reset(env, observation, info)`` and ``act(observation, info) -> str``.
``reset`` receives the unwrapped env so an oracle can read privileged task data; the other
agents must use only ``observation`` and ``info``.

:func:`steps` is the one loop in which an agent plays an env, action by action; every runner of
agent episodes (:func:`play`, ``hpl_data``'s episode runner, MC expert passes and rollouts, the
rollout engine's env workers) is built on it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

from hpl_envs.registry import load_entry_point, profile


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


class ActionRecord(NamedTuple):
    """One action of an episode and what the env answered."""

    action: str
    thought: str  # the agent's ``last_thought`` for this action ("" if it keeps none)
    obs: str  # after the action
    reward: float
    terminated: bool
    truncated: bool
    info: dict  # after the action

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


def steps(env: Any, agent: Agent, obs: str, info: dict, max_actions: int | None = None,
          first_action: str | None = None) -> Iterator[ActionRecord]:
    """The agent plays ``env`` from where it stands (``obs``, ``info``; the agent already reset),
    one record per action, until the episode ends or after ``max_actions`` actions.

    It is lazy: the agent acts only when the next record is asked for, so between records the
    consumer may read the env (``get_state()`` before the next action) or switch it to another
    episode and back. ``first_action``: the agent's first action, already chosen for ``obs``.
    """
    taken = 0
    while max_actions is None or taken < max_actions:
        if taken == 0 and first_action is not None:
            action = first_action
        else:
            action = agent.act(obs, info)
        thought = getattr(agent, "last_thought", "") or ""
        obs, reward, terminated, truncated, info = env.step(action)
        taken += 1
        record = ActionRecord(action, thought, obs, float(reward), bool(terminated), bool(truncated), info)
        yield record
        if record.done:
            return


def play(env: Any, agent: Agent, task_id: str) -> tuple[str, float, dict, list[str]]:
    """Run one episode to its end: (final observation, final reward, final info, actions)."""
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    reward, actions = 0.0, []
    for record in steps(env, agent, obs, info):
        actions.append(record.action)
        obs, reward, info = record.obs, record.reward, record.info
    return obs, reward, info, actions


def make_agent(env_name: str, agent: str, seed: int = 0, **kwargs: Any) -> Agent:
    """A built-in agent by name for an env (``random``, or one of the env profile's ``agents``)."""
    if agent == "random":
        return RandomAgent(seed=seed, **kwargs)
    table = profile(env_name).agents
    if agent not in table:
        raise ValueError(f"no built-in agent {agent!r} for env {env_name!r}; "
                         f"choose from {sorted([*table, 'random'])}")
    return load_entry_point(table[agent])(seed=seed, **kwargs)
