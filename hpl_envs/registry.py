"""Env names, gymnasium ids, constructors and the one place for per-env facts (:class:`EnvProfile`).

``make_env("webshop", **kwargs)`` builds an unwrapped env (what the engine and builders use);
``gymnasium.make("hpl/WebShop-v0")`` works too once :mod:`hpl_envs` is imported. Code outside an
env reads what differs between envs from :func:`profile` instead of branching on the env's name.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvProfile:
    """What generation, evaluation and training need to know about an env."""

    name: str
    gym_id: str
    entry_point: str
    max_turns: int  # default episode length cap (the HPL paper's)
    eval_splits: tuple[str, ...]  # what ``hpl-eval`` runs by default
    success_key: str  # episode field that says "solved": "won", or "reward" (== 1.0)
    reward_range: tuple[float, float]  # min and max episode outcome
    expert_min_reward: float  # the paper's filter on expert/teacher trajectories
    length_thresholds: tuple[int, int, int]  # curriculum group-length buckets: <= t1, <= t2, else
    agents: dict[str, str] = field(default_factory=dict)  # built-in agents: name -> "module:Class" (and random)
    multiline_actions: bool = False  # an action may span lines (SQL)
    observation_separator: str = " "  # between "Observation:" and the text, as ETO/IPR write it
    action_fence: str | None = None  # a code-fence language that wraps the actions in chat turns (IPR's SQL)
    unfenced_actions: tuple[str, ...] = ()  # actions that start with one of these words stay bare
    record_id_prefixes: tuple[str, ...] = ()  # what ETO/IPR put before a task id in their records' ids
    episode_cache_kwarg: str | None = None  # constructor kwarg sizing the per-process game cache
    reward_range_when: dict[str, dict[Any, tuple[float, float]]] = field(default_factory=dict)
    tool_env: str | None = None  # "module:Class": the env as a TRL environment_factory class (its actions as tools)

    def outcome_bounds(self, env_kwargs: dict | None = None) -> tuple[float, float]:
        """(min, max) episode outcome for these constructor arguments."""
        lo, hi = self.reward_range
        for key, by_value in self.reward_range_when.items():
            if env_kwargs and key in env_kwargs and env_kwargs[key] in by_value:
                lo, hi = by_value[env_kwargs[key]]
        return lo, hi

    def outcome_range(self, env_kwargs: dict | None = None) -> float:
        """max - min outcome for these constructor arguments (Hoeffding bounds of adaptive MC)."""
        lo, hi = self.outcome_bounds(env_kwargs)
        return hi - lo

    def curriculum(self) -> dict[str, list[float]]:
        """The thresholds its curriculum buckets are cut by, as hpl-gen records them in its tables'
        metadata and manifest (the trainer, which imports no env, reads them from there)."""
        return {"length_thresholds": list(self.length_thresholds), "delta_thresholds": list(DELTA_THRESHOLDS)}

    def succeeded(self, episode: dict) -> bool:
        return bool(episode["won"]) if self.success_key == "won" else episode["reward"] == 1.0


DELTA_THRESHOLDS = (1.0, 0.7, 0.4)  # ΔR buckets of the paper's curriculum: >= 0.7, >= 0.4, else

PROFILES: dict[str, EnvProfile] = {
    "webshop": EnvProfile(
        "webshop", "hpl/WebShop-v0", "hpl_envs.webshop.env:WebShopEnv", max_turns=10, eval_splits=("test",),
        success_key="reward", reward_range=(0.0, 1.0), expert_min_reward=0.8, length_thresholds=(0, 2, 4),
        agents={"oracle": "hpl_envs.webshop.agents:WebShopOracle",
                "heuristic": "hpl_envs.webshop.agents:WebShopHeuristic"},
        observation_separator="\n", record_id_prefixes=("webshop_",),
        tool_env="hpl_envs.integrations.trl:WebShopToolEnv"),
    "alfworld": EnvProfile(
        "alfworld", "hpl/ALFWorld-v0", "hpl_envs.alfworld.env:AlfWorldEnv", max_turns=30,
        eval_splits=("valid_seen", "valid_unseen"), success_key="won", reward_range=(0.0, 1.0),
        expert_min_reward=1.0, length_thresholds=(0, 3, 6), episode_cache_kwarg="cache_games",
        agents={"oracle": "hpl_envs.alfworld.agents:AlfWorldOracle",
                "heuristic": "hpl_envs.alfworld.agents:AlfWorldHeuristic"},
        record_id_prefixes=("alfworld_",), tool_env="hpl_envs.integrations.trl:AlfWorldToolEnv"),
    "intercode-sql": EnvProfile(
        "intercode-sql", "hpl/InterCodeSQL-v0", "hpl_envs.intercode_sql.env:InterCodeSqlEnv", max_turns=10,
        eval_splits=("test",), success_key="reward", reward_range=(-1.0, 1.0), expert_min_reward=1.0,
        length_thresholds=(0, 2, 4), multiline_actions=True, reward_range_when={"kendall_tau": {False: (0.0, 1.0)}},
        agents={"oracle": "hpl_envs.intercode_sql.agents:SqlOracle",
                "heuristic": "hpl_envs.intercode_sql.agents:SqlHeuristic"},
        action_fence="sql", unfenced_actions=("submit", "skip"), record_id_prefixes=("intercode_sql_", "sql_"),
        tool_env="hpl_envs.integrations.trl:InterCodeSqlToolEnv"),
}
ENVS: dict[str, dict[str, Any]] = {  # the older dict view, kept for callers that read it
    n: {"gym_id": p.gym_id, "entry_point": p.entry_point, "max_turns": p.max_turns} for n, p in PROFILES.items()}
ALIASES = {"web-shop": "webshop", "ws": "webshop", "sql": "intercode-sql", "intercode": "intercode-sql",
           "ic-sql": "intercode-sql", "alfred": "alfworld"}


def canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in PROFILES:
        raise ValueError(f"unknown env {name!r}; available: {sorted(PROFILES)}")
    return key


def profile(name: str) -> EnvProfile:
    return PROFILES[canonical(name)]


def length_bucket(env_name: str, length: int) -> int:
    """Curriculum length bucket 1..3 of a group of ``length`` actions."""
    t = profile(env_name).length_thresholds
    return 1 if length <= t[1] else 2 if length <= t[2] else 3


def delta_bucket(delta: float) -> int:
    """Curriculum ΔR bucket 1..3 (1 = largest gap, the easiest pairs)."""
    return 1 if delta >= DELTA_THRESHOLDS[1] else 2 if delta >= DELTA_THRESHOLDS[2] else 3


class EnvArgumentError(ValueError):
    """Constructor arguments an env does not take (a user's ``--env-arg``): a bad configuration,
    caught before the env is built, unlike a ``TypeError`` from inside it (a bug)."""


def check_arguments(name: str, constructor: Any, kwargs: dict[str, Any]) -> None:
    """Raise :class:`EnvArgumentError` unless ``constructor(**kwargs)`` binds."""
    signature = inspect.signature(constructor)
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise EnvArgumentError(f"env {name}: {e}; it takes {', '.join(signature.parameters)}") from None


def load_entry_point(entry_point: str) -> Any:
    """The object a ``"package.module:Name"`` string names (imported on first use)."""
    module, name = entry_point.split(":")
    return getattr(importlib.import_module(module), name)


def make_env(name: str, **kwargs: Any):
    """The env, unwrapped, with the gymnasium spec ``gymnasium.make`` would give it (so gymnasium's
    checker can build it again, e.g. in each render mode)."""
    p = profile(name)
    constructor = load_entry_point(p.entry_point)
    check_arguments(p.name, constructor, kwargs)
    env = constructor(**kwargs)
    register_all()
    registered = gym.spec(p.gym_id)
    env.spec = replace(registered, kwargs={**registered.kwargs, **kwargs})
    return env


def register_all() -> None:
    for spec in PROFILES.values():
        if spec.gym_id not in gym.registry:
            gym.register(id=spec.gym_id, entry_point=spec.entry_point, kwargs={"max_turns": spec.max_turns},
                         disable_env_checker=True, order_enforce=False)
