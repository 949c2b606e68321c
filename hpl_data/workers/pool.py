"""The worker pool: scheduling, batching, timeouts and restarts of env workers, once for every
back-end (local processes in :mod:`hpl_data.workers.local`, Ray actors in :mod:`hpl_data.workers.ray`).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

from hpl_data.counters import Counters
from hpl_data.workers.protocol import EnvCallError, Failed, Op, Request, Status, WorkerDied


class WorkerSlot:
    """One slot of a pool; its back-end (a process, a Ray actor) is replaced on every restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.where = ""  # the host / Ray node it runs on
        self.proc: mp.Process | None = None  # local back-end
        self.conn = None
        self.actor = None  # Ray back-end
        self.queue: list[tuple[Request, asyncio.Future]] = []
        self.wake = asyncio.Event()
        self.load = 0  # live episodes pinned here
        self.generation = 0  # bumps on every restart
        self.idle = False  # started and waiting for a batch (not starting, no answer pending)


class WorkerPool:
    """``workers`` env workers; ``await call(worker, op, episode_slot, *args)`` from the event loop.

    The scheduling, batching, timeouts and restarts live here, once; a back-end says only how a
    worker starts (:meth:`_spawn`), how a batch travels (:meth:`_exchange`, raising
    :class:`WorkerDied` when the worker is gone) and how it is stopped (:meth:`_kill`,
    :meth:`_stop`).
    """

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, *, env_timeout_s: float = 120.0,
                 start_timeout_s: float = 300.0, max_batch: int = 64, counters: Counters | None = None) -> None:
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs)
        self.workers = [WorkerSlot(i) for i in range(max(1, workers))]
        self.env_timeout_s, self.start_timeout_s, self.max_batch = env_timeout_s, start_timeout_s, max_batch
        self.counters = counters or Counters()
        self._lanes: list[asyncio.Task] = []
        self._closed = False

    # --- what a back-end provides
    async def _spawn(self, w: WorkerSlot) -> None:
        """Start worker ``w`` and wait until its env is loaded; RuntimeError if it cannot."""
        raise NotImplementedError

    async def _exchange(self, w: WorkerSlot, batch: list[Request]) -> list[Any]:
        raise NotImplementedError

    def _kill(self, w: WorkerSlot) -> None:
        raise NotImplementedError

    async def _stop(self, w: WorkerSlot) -> None:
        """Ask a live worker to finish (close its env), then make sure it is gone."""
        self._kill(w)

    async def _after_close(self) -> None:
        """Back-end clean-up once every worker is stopped."""

    # --- the one scheduling / fault path
    async def start(self) -> None:
        """Start every worker; if one cannot start, or the start is cancelled, none is left running."""
        starts = [asyncio.ensure_future(self._start_worker(w)) for w in self.workers]
        try:
            await asyncio.gather(*starts)
        except BaseException:
            for task in starts:
                task.cancel()
            await asyncio.gather(*starts, return_exceptions=True)
            await self.close()
            raise
        self._lanes = [asyncio.create_task(self._lane(w)) for w in self.workers]

    async def _start_worker(self, w: WorkerSlot) -> None:
        w.idle = False
        await self._spawn(w)
        w.idle = True

    async def _lane(self, w: WorkerSlot) -> None:
        """Worker ``w``'s batches, one in flight: send what is queued, settle each future."""
        while not self._closed:
            if not w.queue:
                w.wake.clear()
                await w.wake.wait()
                continue
            batch, w.queue = w.queue[: self.max_batch], w.queue[self.max_batch:]
            w.idle = False
            try:
                answers = await asyncio.wait_for(self._exchange(w, [request for request, _ in batch]),
                                                 self.env_timeout_s * len(batch))
            except (TimeoutError, WorkerDied, OSError) as e:
                await self._fail_batch(w, batch, e)
                continue
            w.idle = True
            for (_, fut), answer in zip(batch, answers):
                if not fut.done():
                    _settle(fut, answer)

    async def _fail_batch(self, w: WorkerSlot, batch: list[tuple[Request, asyncio.Future]], error: Exception) -> None:
        """The worker died or hung mid-batch: every request in it fails with :class:`WorkerDied`,
        and the worker is restarted."""
        reason = error if isinstance(error, WorkerDied) else WorkerDied(
            f"env worker {w.index} (pid {w.pid}{w.where}) "
            f"{'hung' if isinstance(error, TimeoutError) else 'broke'}: {error!r}")
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(reason)
        await self._restart(w)

    async def _restart(self, w: WorkerSlot) -> None:
        self._kill(w)
        if self._closed:
            return
        self.counters.worker_restarts += 1
        while not self._closed:
            try:
                await self._start_worker(w)
                return
            except RuntimeError:
                await asyncio.sleep(1.0)

    def call(self, w: WorkerSlot, op: Op, episode_slot: int, *args: Any) -> asyncio.Future:
        """Queue one operation for the episode in ``episode_slot`` of worker ``w``; the future
        holds the answer's value, or :class:`WorkerDied` / :class:`EnvCallError`."""
        fut = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(RuntimeError("env pool is closed"))
            return fut
        w.queue.append((Request(op, episode_slot, args), fut))
        w.wake.set()
        return fut

    def least_loaded(self) -> WorkerSlot:
        return min(self.workers, key=lambda w: w.load)

    def pids(self) -> list[int | None]:
        return [w.pid for w in self.workers]

    async def close(self) -> None:
        if self._closed:  # once (a failed start closes the pool, and its engine closes it again)
            return
        self._closed = True
        for w in self.workers:
            w.wake.set()
            for _, fut in w.queue:
                if not fut.done():
                    fut.set_exception(RuntimeError("env pool closed"))
            w.queue.clear()
        for lane in self._lanes:
            lane.cancel()
        await asyncio.gather(*self._lanes, return_exceptions=True)
        await asyncio.gather(*(self._stop(w) for w in self.workers), return_exceptions=True)
        await self._after_close()


def _settle(fut: asyncio.Future, answer: Any) -> None:
    if not isinstance(answer, Failed):
        fut.set_result(answer)
    elif answer.status == Status.LOST:
        fut.set_exception(WorkerDied(answer.message))
    else:
        fut.set_exception(EnvCallError(answer.message))
