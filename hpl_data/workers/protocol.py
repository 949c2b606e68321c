"""The env worker protocol: what the engine asks a worker and what comes back.

Typed messages, as vLLM v1's engine core exchanges with its client: an :class:`Op`, a
:class:`Request` per operation and one small answer type per kind of result, instead of string
ops and positional tuples. They are pickled as they are, over a local pipe or to a Ray actor.
Each object costs a few microseconds to pickle where a tuple costs next to nothing, so an answer is
the op's result itself (or :class:`Failed`), and the classes are plain frozen dataclasses: with
``slots=True`` each would unpickle through a Python-level ``__setstate__``, ~3x slower.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class WorkerDied(RuntimeError):
    """The env worker holding an episode died or was killed; its in-process state is gone."""


class EnvCallError(RuntimeError):
    """The env (or the in-worker agent) raised; the message carries its traceback."""


class Op(enum.StrEnum):
    """An env worker operation; its ``args`` and answer are listed with each."""

    RESET = "reset"  # (task_id, seed, agent_spec | None, want_state) -> ResetResult
    STEP = "step"  # (action, want_state) -> StepResult
    AGENT_STEP = "agent_step"  # () -> AgentStepResult: the in-worker agent acts once
    RESTORE = "restore"  # (state,) -> "snapshot" | "replay": how the env restored it
    FORK = "fork"  # (name,) -> None: a new episode from a named snapshot of this worker
    SAVE = "save"  # (name,) -> None: name the episode's current snapshot
    DROP = "drop"  # (prefix,) -> None: forget the named snapshots with this prefix
    RUN = "run"  # ("module:function", *args) -> its value: fn(env, env_name, saved, *args)
    CLOSE = "close"  # () -> None: forget the episode
    PING = "ping"  # () -> the worker's pid


class Status(enum.StrEnum):
    """Why a request failed in the worker."""

    LOST = "lost"  # the episode is unknown to this worker (it was restarted)
    ERR = "err"  # the env raised; the message carries its traceback


@dataclass(frozen=True)
class Request:
    """One operation for the episode in ``episode_slot`` of a worker (its per-worker id)."""

    op: Op
    episode_slot: int
    args: tuple = ()


@dataclass(frozen=True)
class Failed:
    """The answer to a :class:`Request` that failed; any other answer is the op's result (one
    object less per step on the wire than wrapping every result)."""

    status: Status
    message: str


@dataclass(frozen=True)
class ResetResult:
    obs: str
    info: dict
    state: Any = None  # the episode's snapshot, when asked for


@dataclass(frozen=True)
class StepResult:
    """What ``env.step`` returned, with the episode's snapshot after it when asked for."""

    obs: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict
    state: Any = None

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated


@dataclass(frozen=True)
class AgentStepResult(StepResult):
    """One step of an agent that plays next to the env: the step, with the agent's action and thought."""

    action: str = ""
    thought: str = ""
