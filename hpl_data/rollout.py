"""The episode record (:class:`Episode`, :class:`Step`), hpl's one seed formula, the ``hpl-eval``
summary, and :func:`run_episode`: one agent episode in this process, the reference the engine's
agent episodes are checked against. Runs of many episodes go through
:class:`hpl_data.engine.RolloutEngine` (``hpl-eval``, ``hpl-gen``), for agents and chat policies alike.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from hpl_envs.agents import steps


@dataclass
class Step:
    observation: str  # what the agent saw before acting
    action: str
    reward: float
    action_valid: bool
    thought: str = ""
    raw_output: str | None = None  # the model's full text for LLM policies
    logprob: float | None = None  # sum of the action tokens' log-probs
    entropy: float | None = None  # mean per-token entropy of the completion (nats)


@dataclass
class Episode:
    env: str
    task_id: str
    task_type: str
    instruction: str
    agent: str
    seed: int
    steps: list[Step] = field(default_factory=list)
    final_observation: str = ""
    reward: float = 0.0
    won: bool = False
    terminated: bool = False
    truncated: bool = False
    error: str | None = None
    reward_parts: dict | None = None
    seconds: float = 0.0
    stop_reason: str = ""  # done | max_turns | context_length | error | timeout
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    restarts: int = 0  # times the episode was restored or restarted after its env worker died

    def to_dict(self) -> dict:
        return asdict(self)


def derive_seed(*parts: Any) -> int:
    """The one seed formula of hpl: a 31-bit hash of the parts, so every episode, rollout, retry
    and LLM turn has its own seed, whatever worker or order runs it."""
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


def episode_seed(seed: int, task_id: str) -> int:
    """A per-episode seed independent of which worker runs it."""
    return derive_seed(seed, task_id)


def run_episode(env: Any, agent: Any, env_name: str, task_id: str, seed: int) -> Episode:
    """One episode of an agent from reset (:func:`hpl_envs.agents.steps`); errors are recorded."""
    start = time.perf_counter()
    ep = Episode(env=env_name, task_id=str(task_id), task_type="", instruction="",
                 agent=getattr(agent, "name", type(agent).__name__), seed=seed)
    try:
        obs, info = env.reset(seed=seed, options={"task_id": task_id})
        ep.task_type, ep.instruction = str(info.get("task_type", "")), str(info.get("instruction", ""))
        agent.reset(env, obs, info)
        for rec in steps(env, agent, obs, info):
            ep.steps.append(Step(obs, rec.action, rec.reward, bool(rec.info.get("action_valid", True)),
                                 thought=rec.thought))
            obs, info = rec.obs, rec.info
            ep.reward, ep.terminated, ep.truncated = rec.reward, rec.terminated, rec.truncated
        ep.won = bool(info.get("won", False))
        ep.final_observation = obs
        ep.reward_parts = info.get("reward_parts")
    except Exception as e:  # noqa: BLE001 - recorded, never fatal
        ep.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    ep.seconds = time.perf_counter() - start
    return ep


WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def interrupts_blocked() -> Iterator[None]:
    """Start worker processes inside this: they begin life ignoring SIGINT (and, forked, with SIGINT
    and SIGTERM blocked) until :func:`ignore_interrupts` in the worker. Without it, a signal to the
    process group while a worker is still starting (importing, or a forked copy still holding the
    parent's handlers) prints that worker's traceback. A spawned worker starts with an empty signal
    mask, so the mask alone does not cover it; an ignored SIGINT survives its exec. In the parent
    nothing is lost: the signals stay blocked while SIGINT is ignored (Linux keeps a blocked signal
    pending whatever its action), and one that arrived is delivered once the handler is back."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    in_main = threading.current_thread() is threading.main_thread()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGINT, handler if handler is not None else signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_interrupts() -> None:
    """In a worker process: a Ctrl-C reaching the whole process group is the parent's to act on (it
    stops its workers in order; a worker whose parent is gone ends when its pipe closes). SIGTERM
    gets its default back (a forked worker inherits the parent's handler): it ends the worker at
    once, without a word, which multiprocessing's own clean-up at exit relies on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)


def summarize(env_name: str, split: str, agent: str, episodes: list[dict], wall_s: float) -> dict:
    """The ``hpl-eval`` JSON contract; means come with 95 % bootstrap intervals over tasks."""
    from hpl_data.stats import METHOD, mean_ci

    n = len(episodes)
    steps = sum(len(e["steps"]) for e in episodes)
    rewards = [float(e["reward"]) for e in episodes]
    successes = [float(_success(env_name, e)) for e in episodes]
    by_type: dict[str, tuple[list[float], list[float]]] = {}
    for e, reward, success in zip(episodes, rewards, successes):
        type_rewards, type_successes = by_type.setdefault(e["task_type"] or "?", ([], []))
        type_rewards.append(reward)
        type_successes.append(success)

    def means(rs: list[float], ss: list[float]) -> dict:
        return {"avg_reward": sum(rs) / len(rs) if rs else 0.0, "avg_reward_ci95": mean_ci(rs),
                "success_rate": sum(ss) / len(ss) if ss else 0.0, "success_rate_ci95": mean_ci(ss)}

    overall = means(rewards, successes)
    return {
        "env": env_name,
        "split": split,
        "agent": agent,
        "episodes": n,
        "avg_reward": overall["avg_reward"],
        "avg_reward_ci95": overall["avg_reward_ci95"],
        "success_rate": overall["success_rate"],
        "success_rate_ci95": overall["success_rate_ci95"],
        "ci95_method": METHOD,
        "avg_steps": steps / n if n else 0.0,
        "by_task_type": {k: {"episodes": len(rs)} | means(rs, ss) for k, (rs, ss) in sorted(by_type.items())},
        "env_steps_per_s": steps / wall_s if wall_s > 0 else 0.0,
        "failed_episodes": sum(1 for e in episodes if e["error"]),
        "wall_s": wall_s,
    }


def _success(env_name: str, episode: dict) -> bool:
    from hpl_envs.registry import profile

    return profile(env_name).succeeded(episode)
