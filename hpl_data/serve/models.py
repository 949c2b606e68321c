"""The wire types of ``hpl-serve``: OpenEnv's ``Action`` / ``Observation`` / ``State`` base models,
extended with what a text env has. ``/schema`` publishes them."""

from __future__ import annotations

from typing import Any

from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field


class HplAction(Action):
    """One text action, as the env's ``step`` takes it (``search[red shoes]``, a SQL query, ...)."""

    action: str = Field(description="the action text, in the env's own action syntax")


class HplObservation(Observation):
    """What the env shows after a reset or a step; ``reward`` and ``done`` are OpenEnv's fields."""

    text: str = Field(description="the observation text")
    task_id: str = Field(description="the task of this episode")
    session_id: str = Field(description="this session's id (for the extension routes and /ws?session_id=)")
    step: int = Field(description="actions taken in this episode")
    info: dict[str, Any] = Field(default_factory=dict, description="the env's info dict (JSON-safe part)")


class HplState(State):
    """A session's bookkeeping: OpenEnv's ``episode_id`` / ``step_count`` and hpl's task."""

    session_id: str = ""
    task_id: str | None = None
    done: bool = False
    reward: float | None = None
