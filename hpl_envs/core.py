"""The API every hpl env shares.

An hpl env is a :class:`gymnasium.Env` whose observations and actions are text. On top of
gymnasium's 5-tuple API it offers what preference-data generation needs: tasks addressed by
id (``reset(options={"task_id": ...})``), ``task_ids(split)``, and exact snapshots
(``get_state()`` / ``set_state()``) so Monte-Carlo rollouts branch from a state instead of
replaying the prefix from reset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

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


# The keys every hpl env puts in ``info`` after ``reset`` and every ``step``: name -> (type, meaning).
# Env docstrings list them under "Information"; tests/test_env_contract.py checks both.
COMMON_INFO: dict[str, tuple[type | tuple[type, ...], str]] = {
    "task_id": (str, "the task's id; ``reset(options={'task_id': ...})`` takes it back"),
    "task_type": (str, "the task's family (WebShop category, ALFWorld task type, Spider hardness)"),
    "instruction": (str, "what the agent is asked to do"),
    "admissible_actions": ((list, type(None)), "the actions the env accepts now, or None where any text may be"),
    "won": (bool, "the task is solved (only ever True on the terminating step)"),
    "action_valid": (bool, "the env understood the action (always True after reset)"),
    "turn": (int, "actions taken in this episode"),
}


@dataclass(kw_only=True)
class EpisodeState:
    """The base class's part of an episode; each env's state dataclass extends it. A snapshot
    (``get_state()``) is a copy of the whole state, so these fields travel with it."""

    task_id: str
    turn: int = 0  # actions taken
    done: bool = False  # terminated (the env's own end, e.g. a purchase); truncation is turn >= max_turns

    def copy(self) -> EpisodeState:
        """An independent copy; states with mutable containers override it (copy them too)."""
        return replace(self)


class ActionResult(NamedTuple):
    """What an env's ``_apply_action`` reports; the base turns it into gymnasium's 5-tuple."""

    reward: float
    terminated: bool
    action_valid: bool
    won: bool = False


class HplTextEnv(gym.Env):
    """Base class of every hpl env: a template that owns the episode bookkeeping.

    The base implements ``reset``, ``step``, ``get_state``/``set_state`` and ``render``:
    seeding per gymnasium (``super().reset(seed=seed)``, then a task drawn with ``np_random``
    unless ``options["task_id"]`` names one), the turn count, ``terminated`` (the env says so) vs
    ``truncated`` (``max_turns`` actions taken without terminating, reward 0), the error for
    ``step`` after the end (``"<env>: episode is over; call reset()"``) or before ``reset``, and
    the common ``info`` keys (:data:`COMMON_INFO`). An env implements only what is its own:

    * ``_reset_task(task_id) -> EpisodeState`` -- start the task (raise TaskNotFoundError if unknown);
    * ``_apply_action(action) -> ActionResult`` -- one action on ``self._state`` (turn not yet counted);
    * ``observation`` -- the text the agent sees now (returned by reset/step, shown by ``render``);
    * ``task_ids(split)``, ``task_type(task_id)``, ``instruction(task_id)``, ``_default_task_ids()``;
    * optionally ``admissible_actions()`` (None = free text), ``_extra_info()`` (env-specific info
      keys), ``get_state()`` additions and ``_restore(state)`` (a state's outside-Python part:
      a planner snapshot, a server session).
    """

    # render_fps: gymnasium's checker wants one; "ansi" frames are returned on demand, never paced
    metadata: dict[str, Any] = {"render_modes": ["ansi"], "render_fps": 4}
    env_name: str = ""
    splits: tuple[str, ...] = ()
    state_type: type[EpisodeState] = EpisodeState

    def __init__(self, max_turns: int, render_mode: str | None = None) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = int(max_turns)
        self.render_mode = render_mode
        self.observation_space = text_space()
        self.action_space = text_space()
        self._state: EpisodeState | None = None

    # --- the template ----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task_id = self._task_from_options(options)
        if task_id is None:
            pool = self._default_task_ids()
            task_id = str(pool[int(self.np_random.integers(len(pool)))])
        self._state = self._reset_task(task_id)
        return self.observation, self._info(action_valid=True, won=False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        state = self._require_state()
        if self.episode_over:
            raise RuntimeError(f"{self.env_name}: episode is over; call reset()")
        result = self._apply_action(action if isinstance(action, str) else str(action))
        state.turn += 1
        state.done = result.terminated
        truncated = not result.terminated and state.turn >= self.max_turns
        return (self.observation, float(result.reward), result.terminated, truncated,
                self._info(action_valid=result.action_valid, won=result.won))

    @property
    def episode_over(self) -> bool:
        """Terminated or truncated: ``step`` now raises until the next ``reset``."""
        state = self._require_state()
        return state.done or state.turn >= self.max_turns

    def _info(self, action_valid: bool, won: bool) -> dict[str, Any]:
        state = self._require_state()
        info = {"task_id": state.task_id, "task_type": self.task_type(state.task_id),
                "instruction": self.instruction(state.task_id), "admissible_actions": self.admissible_actions(),
                "won": won, "action_valid": action_valid, "turn": state.turn}
        info.update(self._extra_info())
        return info

    def _require_state(self) -> EpisodeState:
        if self._state is None:
            raise RuntimeError(f"{self.env_name}: call reset() before step()")
        return self._state

    # --- snapshots -------------------------------------------------------------------
    def get_state(self) -> EpisodeState:
        """An exact, picklable snapshot of the episode (the base's fields and the env's)."""
        return self._require_state().copy()

    def set_state(self, state: EpisodeState) -> None:
        """Continue from a snapshot of ``get_state()`` (of this env class, any process)."""
        if not isinstance(state, self.state_type):
            name = self.state_type.__name__
            raise TypeError(f"{self.env_name}: set_state expects {'an' if name[0] in 'AEIOU' else 'a'} {name}, "
                            f"got {type(state).__name__}")
        self._restore(state)

    def _restore(self, state: EpisodeState) -> None:
        self._state = state.copy()

    # --- what each env implements ------------------------------------------------------
    def _reset_task(self, task_id: str) -> EpisodeState:
        raise NotImplementedError

    def _apply_action(self, action: str) -> ActionResult:
        raise NotImplementedError

    def _default_task_ids(self) -> Sequence[str | int]:
        """Where ``reset()`` without a task id draws one from (with ``np_random``)."""
        raise NotImplementedError

    def task_type(self, task_id: str) -> str:
        raise NotImplementedError

    def instruction(self, task_id: str) -> str:
        raise NotImplementedError

    def admissible_actions(self) -> list[str] | None:
        """The actions the env accepts now; None where any text may be an action."""
        return None

    def _extra_info(self) -> dict[str, Any]:
        """The env's own ``info`` keys after the common ones (documented in its docstring)."""
        return {}

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
