"""Env workers for the rollout engine: the typed protocol (:mod:`.protocol`), the worker that
holds one env (:mod:`.core`), the pool that schedules them (:mod:`.pool`) and its two back-ends,
local processes (:mod:`.local`) and Ray actors (:mod:`.ray`, imported only when asked for).

:func:`make_pool` picks the back-end; nothing here imports the engine.
"""

from __future__ import annotations

from typing import Protocol

from hpl_data.counters import Counters
from hpl_data.workers.core import EnvWorkerCore
from hpl_data.workers.local import EnvPool
from hpl_data.workers.pool import WorkerPool, WorkerSlot
from hpl_data.workers.protocol import (
    AgentStepResult,
    EnvCallError,
    Failed,
    Op,
    Request,
    ResetResult,
    Status,
    StepResult,
    WorkerDied,
)

__all__ = [
    "AgentStepResult", "EnvCallError", "EnvPool", "EnvWorkerCore", "Failed", "Op", "PoolSettings", "Request",
    "ResetResult", "Status", "StepResult", "WorkerDied", "WorkerPool", "WorkerSlot", "make_pool",
]


class PoolSettings(Protocol):
    """What :func:`make_pool` reads (:class:`hpl_data.engine.EngineConfig` has it)."""

    workers: int
    env_timeout_s: float
    start_method: str
    ray: str | None
    ray_cpus_per_worker: float


def make_pool(env_name: str, env_kwargs: dict, settings: PoolSettings, counters: Counters) -> WorkerPool:
    """The worker back-end the settings ask for: local processes, or Ray actors (``settings.ray``)."""
    common = {"env_timeout_s": settings.env_timeout_s, "counters": counters}
    if settings.ray is not None:
        from hpl_data.workers.ray import RayEnvPool

        return RayEnvPool(env_name, env_kwargs, settings.workers, address=settings.ray,
                          cpus_per_worker=settings.ray_cpus_per_worker, **common)
    return EnvPool(env_name, env_kwargs, settings.workers, start_method=settings.start_method, **common)
