"""The env worker: one env and its episodes, switched by snapshot; what every back-end runs.

A local worker process (:func:`worker_main`) and a Ray actor (:mod:`hpl_data.workers.ray`) both
hold one :class:`EnvWorkerCore` and answer batches of :class:`~hpl_data.workers.protocol.Request`
with :meth:`EnvWorkerCore.run_batch`: one method per :class:`~hpl_data.workers.protocol.Op`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from hpl_data.rollout import ignore_interrupts
from hpl_data.workers.protocol import AgentStepResult, Failed, Op, Request, ResetResult, Status, StepResult
from hpl_envs.agents import ActionRecord
from hpl_envs.agents import steps as agent_steps


def _clean_info(info: dict) -> dict:
    """The info without its ``state`` (the snapshot travels separately, and only when asked for)."""
    return {k: v for k, v in info.items() if k != "state"}


class EnvWorkerCore:
    """One env and its episodes; an episode's snapshot is restored before acting for it and saved
    after, so one env serves many episodes in flight."""

    def __init__(self, env_name: str, env_kwargs: dict) -> None:
        from hpl_envs import make_env

        self.env_name = env_name
        self.env = make_env(env_name, **env_kwargs)
        self.states: dict[int, Any] = {}  # episode slot -> its snapshot
        self.saved: dict[str, Any] = {}  # named snapshots (an MC task's expert states), never shipped back
        self.plays: dict[int, Iterator[ActionRecord]] = {}  # agent episodes: hpl_envs.agents.steps, one per episode
        self.current: int | None = None  # the episode slot whose state the env holds now
        self.handlers: dict[Op, Callable[[int, tuple], Any]] = {
            Op.RESET: self.reset, Op.STEP: self.step, Op.AGENT_STEP: self.agent_step, Op.RESTORE: self.restore,
            Op.FORK: self.fork, Op.SAVE: self.save, Op.DROP: self.drop, Op.RUN: self.run, Op.CLOSE: self.forget,
            Op.PING: self.ping,
        }

    # --- episode switching
    def _activate(self, slot: int) -> None:
        if slot not in self.states:
            raise KeyError(slot)
        if self.current != slot:
            self.env.set_state(self.states[slot])
            self.current = slot

    def _keep(self, slot: int, want_state: bool) -> Any:
        """Save the episode's snapshot after the env moved; it is returned when asked for."""
        self.states[slot] = self.env.get_state()
        self.current = slot
        return self.states[slot] if want_state else None

    # --- one method per operation: (episode slot, args) -> answer value
    def reset(self, slot: int, args: tuple) -> ResetResult:
        task_id, seed, agent_spec, want_state = args
        obs, info = self.env.reset(seed=seed, options={"task_id": task_id})
        if agent_spec is not None:  # the agent plays next to the env: one steps() generator per episode
            from hpl_data.policies import make_agent_from_spec

            agent = make_agent_from_spec(self.env_name, agent_spec, seed=seed)
            agent.reset(self.env, obs, info)
            self.plays[slot] = agent_steps(self.env, agent, obs, info)
        return ResetResult(obs, _clean_info(info), self._keep(slot, want_state))

    def step(self, slot: int, args: tuple) -> StepResult:
        action, want_state = args
        self._activate(slot)
        obs, reward, terminated, truncated, info = self.env.step(action)
        return StepResult(obs, float(reward), bool(terminated), bool(truncated), _clean_info(info),
                          self._keep(slot, want_state))

    def agent_step(self, slot: int, args: tuple) -> AgentStepResult:
        play = self.plays[slot]
        self._activate(slot)  # the same env object: the generator goes on from this episode's snapshot
        rec = next(play, None)
        if rec is None:
            raise RuntimeError(f"episode slot {slot} is over; reset it before the next agent_step")
        self._keep(slot, False)
        return AgentStepResult(rec.obs, rec.reward, rec.terminated, rec.truncated, _clean_info(rec.info),
                               action=rec.action, thought=rec.thought)

    def restore(self, slot: int, args: tuple) -> str:
        self.env.set_state(args[0])
        self._keep(slot, False)
        return getattr(self.env, "last_restore", "snapshot")

    def fork(self, slot: int, args: tuple) -> None:
        self.env.set_state(self.saved[args[0]])
        self._keep(slot, False)

    def save(self, slot: int, args: tuple) -> None:
        self._activate(slot)
        self.saved[args[0]] = self.states[slot]

    def drop(self, slot: int, args: tuple) -> None:
        for key in [k for k in self.saved if k.startswith(args[0])]:
            del self.saved[key]

    def run(self, slot: int, args: tuple) -> Any:
        module, _, name = args[0].partition(":")
        self.current = None  # it moves the env; the next episode op restores its own state
        return getattr(importlib.import_module(module), name)(self.env, self.env_name, self.saved, *args[1:])

    def forget(self, slot: int, args: tuple) -> None:
        self.states.pop(slot, None)
        self.plays.pop(slot, None)
        if self.current == slot:
            self.current = None

    def ping(self, slot: int, args: tuple) -> int:
        return os.getpid()

    # --- batches
    def handle(self, request: Request) -> Any:
        handler = self.handlers.get(request.op)
        if handler is None:
            raise ValueError(f"unknown op {request.op!r}")
        return handler(request.episode_slot, request.args)

    def run_batch(self, batch: list[Request]) -> list[Any]:
        """One answer per request: its op's result, or :class:`Failed` (lost: the episode is
        unknown here; err: with the traceback); an env error fails its episode, never the worker."""
        out = []
        for request in batch:
            try:
                out.append(self.handle(request))
            except KeyError as e:
                out.append(Failed(Status.LOST, f"episode slot {request.episode_slot} unknown to this worker ({e})"))
            except Exception as e:  # noqa: BLE001 - the episode fails, the worker lives on
                self.current = None  # the env may be mid-way; restore before the next use
                out.append(Failed(Status.ERR, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.env.close()


def worker_main(conn, env_name: str, env_kwargs: dict) -> None:
    """Loop of one local env worker process: receive a batch, answer a list of answers. It ends
    quietly when the parent says so (None) or is gone (its pipe closed)."""
    ignore_interrupts()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        core = EnvWorkerCore(env_name, env_kwargs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which gives up cleanly
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        conn.send(("ready", os.getpid()))
        while (batch := conn.recv()) is not None:
            conn.send(core.run_batch(batch))
    except (EOFError, OSError):  # the parent is gone or closed the pipe (BrokenPipeError is an OSError)
        pass
    core.close()
