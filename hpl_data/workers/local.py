"""Env workers as local processes, talking over pipes: the default back-end of the engine."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from typing import Any

from hpl_data.rollout import interrupts_blocked
from hpl_data.workers.core import worker_main
from hpl_data.workers.pool import WorkerPool, WorkerSlot
from hpl_data.workers.protocol import Request, WorkerDied


class EnvPool(WorkerPool):
    """Env workers as local processes, talking over pipes."""

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, *, start_method: str = "spawn",
                 **kwargs: Any) -> None:
        super().__init__(env_name, env_kwargs, workers, **kwargs)
        # never fork a process that may hold CUDA / vLLM threads; "fork" (the env data already
        # loaded in this process, shared copy-on-write) is for callers that know it holds none
        self.ctx = mp.get_context(start_method)

    async def _spawn(self, w: WorkerSlot) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(child, self.env_name, self.env_kwargs), daemon=True,
                                name=f"hpl-env-{self.env_name}-{w.index}")
        with interrupts_blocked():
            proc.start()
        child.close()
        w.proc, w.conn, w.pid = proc, parent, proc.pid
        w.generation += 1
        try:
            msg = await asyncio.wait_for(self._recv(w), self.start_timeout_s)
        except (TimeoutError, WorkerDied) as e:
            self._kill(w)
            raise RuntimeError(f"env worker {w.index} for {self.env_name} did not start: {e}") from e
        if msg[0] != "ready":
            self._kill(w)
            raise RuntimeError(f"env worker {w.index} for {self.env_name} failed to start: {msg[1]}")

    def _recv(self, w: WorkerSlot) -> asyncio.Future:
        """The worker's next message, read when its pipe is readable (never blocking the loop)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = w.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if fut.done():
                return
            try:
                fut.set_result(w.conn.recv())
            except (EOFError, OSError) as e:
                fut.set_exception(WorkerDied(f"env worker {w.index} (pid {w.pid}) died: {type(e).__name__}"))

        loop.add_reader(fd, readable)
        fut.add_done_callback(lambda _: loop.remove_reader(fd))
        return fut

    async def _exchange(self, w: WorkerSlot, batch: list[Request]) -> list[Any]:
        w.conn.send(batch)
        return await self._recv(w)

    def _kill(self, w: WorkerSlot) -> None:
        if w.proc is not None and w.proc.is_alive():
            w.proc.kill()
        if w.proc is not None:
            w.proc.join(timeout=5)
        if w.conn is not None:
            w.conn.close()

    async def _stop(self, w: WorkerSlot) -> None:
        try:
            if w.conn is not None and not w.conn.closed:
                w.conn.send(None)
        except OSError:
            pass
        if w.proc is not None:  # one still starting or mid-batch (Ctrl-C, SIGTERM) gets a short grace
            w.proc.join(timeout=5 if w.idle else 0.5)
        self._kill(w)
