"""Env workers as Ray actors: the second worker back-end of :class:`hpl_data.engine.RolloutEngine`.

Why Ray: the users' clusters (Slurm, Kubernetes with KubeRay) already run it, and RL stacks for
agents (verl-agent, SkyRL, OpenRLHF) put env workers in Ray actors; hpl writes no scheduler.

Each actor holds one env (:class:`hpl_data.workers.core.EnvWorkerCore`, the same code as a local worker
process) and switches episodes by snapshot. Actors are placed with Ray's ``SPREAD`` strategy, so
they spread over the nodes. Everything else (batching, timeouts, restarts, counters) is the
engine's one code path (:class:`hpl_data.workers.pool.WorkerPool`): an actor whose node is lost fails
its batch with :class:`~hpl_data.workers.protocol.WorkerDied`, the engine restores or restarts its
episodes on another worker, and the pool starts a replacement actor on a live node. Actors are
created with ``max_restarts=0`` for that reason: the engine, not Ray, decides what a death means.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from hpl_data.workers.pool import WorkerPool, WorkerSlot
from hpl_data.workers.protocol import Request, WorkerDied

INSTALL_HINT = "--ray needs Ray: pip install 'hpl[ray]' (or pip install 'ray[default]>=2.40')"
FORWARDED_ENV = ("OMP_NUM_THREADS",)  # plus every HPL_* variable (HPL_DATA_DIR, ...)


class RayUnavailableError(ImportError):
    """Ray is not installed; the message says how to install it."""


def require_ray():
    """The ``ray`` module, or :class:`RayUnavailableError` with the install hint."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailableError(INSTALL_HINT) from e
    return ray


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A clear error in seconds for an address no cluster answers at (``ray.init`` itself keeps
    retrying one for minutes). ``auto`` is not checked: it starts a local cluster if need be."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]  # ray://HOST:PORT (Ray client) or HOST:PORT (GCS)
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--ray {address!r}: give HOST:PORT (as `ray start --head` prints it) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConnectionError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); start one "
                              f"with `ray start --head --port {port}`, or use --ray auto") from None


def connect(address: str) -> None:
    """Join the cluster at ``address``; ``auto`` joins the running one (``RAY_ADDRESS``, or the one
    ``ray start`` left on this machine) or else starts a local one. Once per process."""
    ray = require_ray()
    if ray.is_initialized():
        return
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
            return
        except ConnectionError:  # no cluster running: a local one, just for this process
            ray.init(include_dashboard=False, log_to_driver=False)
            return
    check_reachable(address)
    ray.init(address=address, log_to_driver=False)


def forwarded_env() -> dict[str, str]:
    """The driver's settings an actor must see on any node (data folder, thread caps)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("HPL_") or k in FORWARDED_ENV}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class EnvActor:
    """One env in a Ray worker process (made a Ray actor class by :class:`RayEnvPool`)."""

    def __init__(self, env_name: str, env_kwargs: dict, env_vars: dict[str, str]) -> None:
        os.environ.update(env_vars)
        from hpl_data.workers.core import EnvWorkerCore

        self.core = EnvWorkerCore(env_name, env_kwargs)

    def ready(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run_batch(self, batch: list[Request]) -> list[Any]:
        return self.core.run_batch(batch)

    def close(self) -> None:
        self.core.close()


class _ActorLost(RuntimeError):
    """An actor died before it answered ``ready`` (its env failed to load, or its node was lost)."""


class RayEnvPool(WorkerPool):
    """``workers`` Ray actors spread over the cluster at ``address``."""

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, *, address: str = "auto",
                 cpus_per_worker: float = 1.0, **kwargs: Any) -> None:
        super().__init__(env_name, env_kwargs, workers, **kwargs)
        self.address, self.cpus_per_worker = address, cpus_per_worker
        self._actor_class = None

    async def start(self) -> None:
        ray = require_ray()
        connect(self.address)  # in this thread: ray.init installs signal handlers
        self._actor_class = ray.remote(EnvActor)
        self._env_vars = forwarded_env()
        await super().start()

    @staticmethod
    async def _result(ref) -> Any:
        return await asyncio.wrap_future(ref.future())

    async def _spawn(self, w: WorkerSlot, attempts: int = 3) -> None:
        """A new actor for slot ``w``; an actor lost before it ran (its node died) is tried again,
        a few times (an env that fails to load fails every time)."""
        for attempt in range(attempts):
            try:
                return await self._spawn_once(w)
            except _ActorLost:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1.0)

    async def _spawn_once(self, w: WorkerSlot) -> None:
        from ray.exceptions import RayError

        w.actor = self._actor_class.options(
            num_cpus=self.cpus_per_worker, scheduling_strategy="SPREAD", max_restarts=0, max_task_retries=0,
            name=None).remote(self.env_name, self.env_kwargs, self._env_vars)
        w.generation += 1
        try:
            w.pid, node = await asyncio.wait_for(self._result(w.actor.ready.remote()), self.start_timeout_s)
        except TimeoutError as e:
            self._kill(w)
            raise RuntimeError(f"Ray env actor {w.index} for {self.env_name} did not start within "
                               f"{self.start_timeout_s:.0f}s (does the cluster have {self.cpus_per_worker:g} free "
                               f"CPU(s) per worker for {len(self.workers)} workers?)") from e
        except RayError as e:
            self._kill(w)
            raise _ActorLost(f"Ray env actor {w.index} for {self.env_name} failed to start: "
                             f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}") from e
        w.where = f", node {node[:8]}"

    async def _exchange(self, w: WorkerSlot, batch: list[Request]) -> list[Any]:
        from ray.exceptions import RayError

        try:
            return await self._result(w.actor.run_batch.remote(batch))
        except RayError as e:  # the actor or its node is gone (ActorDiedError, ActorUnavailableError, ...)
            raise WorkerDied(f"env worker {w.index} (Ray actor, pid {w.pid}{w.where}) died: {type(e).__name__}") from e

    def _kill(self, w: WorkerSlot) -> None:
        if w.actor is None:
            return
        import ray

        try:
            ray.kill(w.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or the cluster is gone
            pass
        w.actor = None

    async def _stop(self, w: WorkerSlot) -> None:
        if w.actor is not None:
            try:
                await asyncio.wait_for(self._result(w.actor.close.remote()), 5)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
                pass
        self._kill(w)
