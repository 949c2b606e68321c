"""Sessions of ``hpl-serve`` on the engine's worker pool: many sessions, few env processes.

A session is an episode slot on one env worker; the worker restores the slot's snapshot before it
acts for it (:class:`hpl_data.workers.EnvWorkerCore`), so a worker serves any number of sessions.
Named snapshots stay in the worker that made them (they never cross the pipe), which is why a
session's snapshots restore into that session and a fork lives on its parent's worker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from hpl_data.counters import Counters
from hpl_data.serve.config import ServeConfig
from hpl_data.serve.models import HplObservation, HplState
from hpl_data.workers import EnvCallError, Op, ResetResult, StepResult, WorkerDied, WorkerPool, WorkerSlot, make_pool

TASK_IDS_OP = "hpl_data.serve.worker_ops:task_ids"
EXPIRED_REMEMBERED = 4096  # ids of reaped sessions kept to say "expired" rather than "unknown"


class SessionError(Exception):
    """A request the server refuses: ``status`` is its HTTP status, ``code`` OpenEnv's WS error code."""

    def __init__(self, status: int, message: str, code: str = "EXECUTION_ERROR") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass
class Progress:
    """A session's bookkeeping beside the env's own state; copied with every snapshot."""

    task_id: str | None = None
    episode_id: str | None = None
    step_count: int = 0
    done: bool = False
    reward: float | None = None


@dataclass
class Session:
    id: str
    worker: WorkerSlot
    slot: int
    generation: int  # the worker's generation when the episode began: a restart loses it
    progress: Progress = field(default_factory=Progress)
    snapshots: dict[str, Progress] = field(default_factory=dict)  # snapshot id -> bookkeeping at that point
    last_active: float = field(default_factory=time.monotonic)
    attached: bool = False  # a WebSocket drives it
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def state(self) -> HplState:
        p = self.progress
        return HplState(session_id=self.id, episode_id=p.episode_id, step_count=p.step_count, task_id=p.task_id,
                        done=p.done, reward=p.reward)


def json_safe(value: Any) -> Any:
    """The env's info as JSON: containers kept, anything else JSON cannot hold as its str."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


class SessionManager:
    """Opens, drives, snapshots, forks and reaps sessions; the server's only path to the envs."""

    def __init__(self, config: ServeConfig, pool: WorkerPool | None = None) -> None:
        self.config = config
        self.counters = Counters()
        self.pool = pool or make_pool(config.env, config.env_kwargs, config, self.counters)
        self.sessions: dict[str, Session] = {}
        self.expired: OrderedDict[str, None] = OrderedDict()
        self._slots = itertools.count(1)
        self._snapshot_ids = itertools.count(1)
        self._draws = random.Random(config.seed)
        self._task_ids: dict[str, list[str]] = {}
        self._reaper: asyncio.Task | None = None
        self.episodes = 0  # resets served, for /hpl/stats

    async def start(self) -> None:
        await self.pool.start()
        self._reaper = asyncio.create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        self.sessions.clear()
        await self.pool.close()

    # --- sessions
    def open(self, worker: WorkerSlot | None = None) -> Session:
        if len(self.sessions) >= self.config.max_sessions:
            raise SessionError(429, f"server at capacity: {len(self.sessions)} sessions open, --max-sessions "
                               f"{self.config.max_sessions}; close one or retry later", "CAPACITY_REACHED")
        w = worker or self.pool.least_loaded()
        session = Session(uuid.uuid4().hex, w, next(self._slots), w.generation)
        w.load += 1
        self.sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is not None:
            return session
        if session_id in self.expired:
            raise SessionError(410, f"session {session_id} expired: idle for more than {self.config.session_ttl_s:g} "
                               "s (--session-ttl-s); open a new one", "SESSION_ERROR")
        raise SessionError(404, f"unknown session {session_id!r}", "SESSION_ERROR")

    async def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        session.worker.load -= 1
        await self._quietly(session.worker, Op.CLOSE, session.slot)
        if session.snapshots:
            await self._quietly(session.worker, Op.DROP, 0, f"{session.id}/")

    async def _quietly(self, worker: WorkerSlot, op: Op, slot: int, *args: Any) -> None:
        """Clean-up that must not fail the caller: a dead worker has forgotten the slot anyway."""
        try:
            await self.pool.call(worker, op, slot, *args)
        except (WorkerDied, EnvCallError, RuntimeError):
            pass

    # --- the env
    async def _call(self, session: Session, op: Op, *args: Any) -> Any:
        try:
            return await self.pool.call(session.worker, op, session.slot, *args)
        except WorkerDied as e:
            session.progress = Progress()
            raise SessionError(503, f"the env worker of session {session.id} restarted ({e}); its episode is lost: "
                               "reset it") from e
        except EnvCallError as e:
            raise SessionError(400, str(e).splitlines()[0]) from e

    async def task_ids(self, split: str) -> list[str]:
        if split not in self._task_ids:
            try:
                ids = await self.pool.call(self.pool.least_loaded(), Op.RUN, 0, TASK_IDS_OP, split)
            except EnvCallError as e:
                raise SessionError(400, f"split {split!r}: {str(e).splitlines()[0]}") from e
            self._task_ids[split] = ids
        return self._task_ids[split]

    async def _draw_task(self, seed: int | None) -> str:
        ids = await self.task_ids(self.config.split)
        if not ids:
            raise SessionError(400, f"split {self.config.split!r} has no tasks")
        rng = random.Random(seed) if seed is not None else self._draws
        return ids[rng.randrange(len(ids))]

    async def reset(self, session: Session, task_id: str | None = None, seed: int | None = None,
                    episode_id: str | None = None) -> HplObservation:
        async with session.lock:
            session.touch()
            task = str(task_id) if task_id is not None else await self._draw_task(seed)
            session.generation = session.worker.generation
            result: ResetResult = await self._call(session, Op.RESET, task, seed, None, False)
            session.progress = Progress(task_id=task, episode_id=episode_id or uuid.uuid4().hex)
            self.episodes += 1
            session.touch()
            return self._observation(session, result.obs, None, False, result.info)

    async def step(self, session: Session, action: str) -> HplObservation:
        if len(action) > self.config.max_action_chars:
            raise SessionError(422, f"action of {len(action)} characters is over this server's limit of "
                               f"{self.config.max_action_chars} (--max-action-chars)", "VALIDATION_ERROR")
        async with session.lock:
            session.touch()
            self._check_live(session)
            result: StepResult = await self._call(session, Op.STEP, action, False)
            p = session.progress
            p.step_count, p.done, p.reward = p.step_count + 1, result.done, result.reward
            session.touch()
            return self._observation(session, result.obs, result.reward, result.done, result.info)

    def _check_live(self, session: Session) -> None:
        if session.progress.task_id is None or session.generation != session.worker.generation:
            session.progress = Progress()
            raise SessionError(409, f"session {session.id} has no episode: reset it first", "SESSION_ERROR")
        if session.progress.done:
            raise SessionError(409, f"the episode of session {session.id} is over: reset it", "SESSION_ERROR")

    def _observation(self, session: Session, obs: str, reward: float | None, done: bool, info: dict) -> HplObservation:
        p = session.progress
        # model_construct, no validation: every field is the server's own value, on every step
        return HplObservation.model_construct(text=obs, task_id=p.task_id or "", session_id=session.id,
                                              step=p.step_count, info=json_safe(info), reward=reward, done=done)

    # --- extensions: snapshot / restore / fork
    async def snapshot(self, session: Session) -> str:
        async with session.lock:
            session.touch()
            if session.progress.task_id is None or session.generation != session.worker.generation:
                raise SessionError(409, f"session {session.id} has no episode to snapshot: reset it first",
                                   "SESSION_ERROR")
            if len(session.snapshots) >= self.config.max_snapshots_per_session:
                raise SessionError(429, f"session {session.id} holds {len(session.snapshots)} snapshots, the limit "
                                   "(drop the session or restore an old one)")
            snapshot_id = f"{session.id}/{next(self._snapshot_ids)}"
            await self._call(session, Op.SAVE, _worker_name(snapshot_id))
            session.snapshots[snapshot_id] = _copy(session.progress)
            return snapshot_id

    async def restore(self, session: Session, snapshot_id: str) -> HplState:
        async with session.lock:
            session.touch()
            progress = session.snapshots.get(snapshot_id)
            if progress is None:
                raise SessionError(404, f"session {session.id} has no snapshot {snapshot_id!r}", "SESSION_ERROR")
            if session.generation != session.worker.generation:
                raise SessionError(409, f"the env worker of session {session.id} restarted: its snapshots are lost",
                                   "SESSION_ERROR")
            await self._call(session, Op.FORK, _worker_name(snapshot_id))
            session.progress = _copy(progress)
            return session.state()

    async def fork(self, parent: Session) -> Session:
        """A new session continuing from ``parent``'s state now, on the same worker."""
        child = self.open(parent.worker)  # a refusal (capacity) before anything is saved
        snapshot_id = None
        try:
            snapshot_id = await self.snapshot(parent)
            async with parent.lock:
                child.generation = parent.generation
                await self._call(child, Op.FORK, _worker_name(snapshot_id))
                child.progress = _copy(parent.progress)
        except BaseException:
            await self.close_session(child.id)
            raise
        finally:
            if snapshot_id is not None:
                parent.snapshots.pop(snapshot_id, None)
                await self._quietly(parent.worker, Op.DROP, 0, _worker_name(snapshot_id))
        return child

    # --- idle sessions
    async def _reap_forever(self) -> None:
        interval = min(max(self.config.session_ttl_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            await self.reap()

    async def reap(self) -> int:
        deadline = time.monotonic() - self.config.session_ttl_s
        stale = [s.id for s in self.sessions.values() if s.last_active < deadline and not s.lock.locked()]
        for session_id in stale:
            await self.close_session(session_id)
            self.expired[session_id] = None
            while len(self.expired) > EXPIRED_REMEMBERED:
                self.expired.popitem(last=False)
        return len(stale)


def _worker_name(snapshot_id: str) -> str:
    """The snapshot's name in its worker, ended so that dropping it (by prefix) drops only it."""
    return f"{snapshot_id}#"


def _copy(progress: Progress) -> Progress:
    return Progress(**vars(progress))
