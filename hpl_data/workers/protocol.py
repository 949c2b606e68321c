"""The env worker protocol: what the engine asks a worker and what comes back.

Typed messages, as vLLM v1's engine core exchanges with its client: an :class:`Op`, a
:class:`Request` per operation and one small answer type per kind of result, instead of string
ops and positional tuples. They are pickled as they are, over a local pipe or to a Ray actor.
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
    """How a request ended in the worker."""

    OK = "ok"
    LOST = "lost"  # the episode is unknown to this worker (it was restarted)
    ERR = "err"  # the env raised; the value is the message with its traceback


@dataclass(frozen=True, slots=True)
class Request:
    """One operation for the episode in ``episode_slot`` of a worker (its per-worker id)."""

    op: Op
    episode_slot: int
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one :class:`Request`, in the order of the batch."""

    status: Status
    value: Any = None


@dataclass(frozen=True, slots=True)
class ResetResult:
    obs: str
    info: dict
    state: Any = None  # the episode's snapshot, when asked for


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class AgentStepResult:
    """One step of an agent that plays next to the env: its action and thought, and the step."""

    action: str
    thought: str
    step: StepResult
