"""The API every hpl env shares.

An hpl env is a :class:`gymnasium.Env` whose observations and actions are text. On top of
gymnasium's 5-tuple API it offers what preference-data generation needs: tasks addressed by
id (``reset(options={"task_id": ...})``), ``task_ids(split)``, and exact snapshots
(``get_state()`` / ``set_state()``) so Monte-Carlo rollouts branch from a state instead of
replaying the prefix from reset.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium import spaces

MAX_TEXT = 1_000_000


class FreeText(spaces.Text):
    """Any unicode string up to ``max_length`` (gymnasium's Text only admits its charset).

    ``sample()`` still draws from the alphanumeric charset, which is enough for smoke tests.
    """

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


def text_space(max_length: int = MAX_TEXT) -> FreeText:
    return FreeText(max_length=max_length, min_length=0)


class EnvUnavailableError(RuntimeError):
    """Something the env needs outside Python (a server, a binary) is not available."""


class TaskNotFoundError(KeyError):
    """``reset`` was given a task id the env does not have."""


class HplTextEnv(gym.Env):
    """Base class: text spaces, task bookkeeping and the snapshot contract.

    Subclasses implement ``_reset_task``, ``_step``, ``get_state``, ``set_state`` and
    ``task_ids``. ``info`` always carries ``task_id``, ``task_type``, ``instruction``,
    ``admissible_actions`` (list or None), ``won``, ``action_valid`` and ``turn``.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi"]}
    env_name: str = ""
    splits: tuple[str, ...] = ()

    def __init__(self, max_turns: int, render_mode: str | None = None) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = int(max_turns)
        self.render_mode = render_mode
        self.observation_space = text_space()
        self.action_space = text_space()

    @property
    def observation(self) -> str:
        """The text the agent sees now (what ``render()`` shows in ``ansi`` mode)."""
        raise NotImplementedError

    def render(self) -> str | None:
        """``ansi``: the current observation as text; otherwise nothing (text envs draw no pixels)."""
        return self.observation if self.render_mode == "ansi" else None

    def warm_caches(self) -> None:
        """Build on-disk caches (indexes, converted data) now, e.g. in a parent process before
        workers start, so that workers only open them."""

    # --- task handling -------------------------------------------------------------
    def task_ids(self, split: str) -> list[str]:
        raise NotImplementedError

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.env_name}: unknown split {split!r}; choose from {list(self.splits)}")

    @staticmethod
    def _task_from_options(options: dict | None) -> str | None:
        if not options or options.get("task_id") is None:
            return None
        return str(options["task_id"])
