"""The async rollout engine: many episodes in flight, env steps in worker processes, LLM calls
from one event loop.

Why this shape: with an LLM policy the env step costs microseconds to milliseconds and a model
call costs tens to thousands of milliseconds, so the GPU is only busy when hundreds of episodes
keep requests queued at the server (continuous batching, prefix cache). One asyncio loop runs
every episode as a coroutine; envs are CPU-bound and not thread-safe, so they live in worker
processes.

* Each worker holds one env and multiplexes its episodes by snapshot: before acting for an
  episode it restores that episode's state (``set_state``), after it saves it (``get_state``).
  Episodes are pinned to a worker; requests to a worker are batched, one batch in flight.
* A worker that dies (SIGKILL, OOM, segfault) or hangs past ``env_timeout_s`` is restarted.
  Chat-policy episodes continue from their last snapshot, which travels back with every step
  (ALFWorld's in-process planner snapshot does not cross processes; its state replays its
  actions deterministically instead). Agent episodes (the agent lives in the worker) restart
  from reset with the same seed.
* One episode loop per kind of policy: an agent plays next to the env in its worker, through
  :func:`hpl_envs.agents.steps` (a generator per episode, advanced one ``agent_step`` at a time);
  a chat policy plays through :meth:`RolloutEngine.play`, from reset (``hpl-eval``, collection)
  or from a named snapshot and the conversation that led to it (MC rollouts and plays).
* An episode that fails (LLM errors after retries, env exceptions, its timeout) is recorded with
  the reason; it never stops the run.
* Workers are local processes (:class:`EnvPool`) or Ray actors spread over a cluster
  (:class:`hpl_data.ray_pool.RayEnvPool`, ``EngineConfig.ray``): two back-ends of one
  :class:`WorkerPool`, so scheduling, fault handling and counters are the same code for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from hpl_data.policies import (
    ChatPolicy,
    Completion,
    ContextLengthError,
    PolicyError,
    PolicySpec,
    SamplingParams,
    parse_spec,
)
from hpl_data.rollout import Episode, Step, derive_seed, episode_seed, ignore_interrupts, interrupts_blocked
from hpl_envs.agents import ActionRecord
from hpl_envs.agents import steps as agent_steps
from hpl_envs.registry import profile


class WorkerDied(RuntimeError):
    """The env worker holding an episode died or was killed; its in-process state is gone."""


class EnvCallError(RuntimeError):
    """The env (or the in-worker agent) raised; the message carries its traceback."""


# ----------------------------------------------------------------------------- worker process
def _clean_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "state"}


class EnvWorkerCore:
    """One env and its episodes, switched by snapshot: what every worker back-end runs.

    A local worker process (:func:`_worker_main`) and a Ray actor (:mod:`hpl_data.ray_pool`) both
    hold one of these and answer batches of ``(op, episode, args)`` with :meth:`run_batch`.
    """

    def __init__(self, env_name: str, env_kwargs: dict) -> None:
        from hpl_envs import make_env

        self.env_name = env_name
        self.env = make_env(env_name, **env_kwargs)
        self.states: dict[int, Any] = {}
        self.saved: dict[str, Any] = {}  # named snapshots (an MC task's expert states), never shipped back
        self.plays: dict[int, Iterator[ActionRecord]] = {}  # agent episodes: hpl_envs.agents.steps, one per episode
        self.current: int | None = None

    def _activate(self, ep: int) -> None:
        if ep not in self.states:
            raise KeyError(ep)
        if self.current != ep:
            self.env.set_state(self.states[ep])
            self.current = ep

    def _after(self, ep: int, want_state: bool):
        self.states[ep] = self.env.get_state()
        self.current = ep
        return self.states[ep] if want_state else None

    def _step(self, ep: int, action: str, want_state: bool):
        obs, reward, term, trunc, info = self.env.step(action)
        state = self._after(ep, want_state)
        return obs, float(reward), bool(term), bool(trunc), _clean_info(info), state

    def handle(self, op: str, ep: int, args: tuple):
        env = self.env
        if op == "reset":
            task_id, seed, agent_spec, want_state = args
            obs, info = env.reset(seed=seed, options={"task_id": task_id})
            if agent_spec is not None:  # the agent plays next to the env: one steps() generator per episode
                from hpl_data.policies import make_agent_from_spec

                agent = make_agent_from_spec(self.env_name, agent_spec, seed=seed)
                agent.reset(env, obs, info)
                self.plays[ep] = agent_steps(env, agent, obs, info)
            return obs, _clean_info(info), self._after(ep, want_state)
        if op == "step":
            self._activate(ep)
            return self._step(ep, args[0], args[1])
        if op == "agent_step":  # (action, thought, obs, reward, terminated, truncated, info, state)
            play = self.plays[ep]
            self._activate(ep)  # the same env object: the generator goes on from this episode's snapshot
            rec = next(play, None)
            if rec is None:
                raise RuntimeError(f"episode {ep} is over; reset it before the next agent_step")
            self._after(ep, False)
            return rec.action, rec.thought, rec.obs, rec.reward, rec.terminated, rec.truncated, _clean_info(rec.info), None
        if op == "restore":
            env.set_state(args[0])
            self.states[ep] = env.get_state()
            self.current = ep
            return getattr(env, "last_restore", "snapshot")
        if op == "fork":  # a new episode starting from a named snapshot of this worker
            env.set_state(self.saved[args[0]])
            self.states[ep] = env.get_state()
            self.current = ep
            return None
        if op == "save":  # name the episode's current snapshot
            self._activate(ep)
            self.saved[args[0]] = self.states[ep]
            return None
        if op == "drop":  # forget the named snapshots with this prefix
            for key in [k for k in self.saved if k.startswith(args[0])]:
                del self.saved[key]
            return None
        if op == "run":  # a library function next to the env: fn(env, env_name, saved, *args)
            module, _, name = args[0].partition(":")
            self.current = None  # it moves the env; the next episode op restores its own state
            return getattr(importlib.import_module(module), name)(env, self.env_name, self.saved, *args[1:])
        if op == "close":
            for d in (self.states, self.plays):
                d.pop(ep, None)
            if self.current == ep:
                self.current = None
            return None
        if op == "ping":
            return os.getpid()
        raise ValueError(f"unknown op {op!r}")

    def run_batch(self, batch: list[tuple[str, int, tuple]]) -> list[tuple[str, Any]]:
        """``[(status, value)]``: ok, lost (the episode is unknown here) or err (with traceback)."""
        out = []
        for op, ep, args in batch:
            try:
                out.append(("ok", self.handle(op, ep, args)))
            except KeyError as e:
                out.append(("lost", f"episode {ep} unknown to this worker ({e})"))
            except Exception as e:  # noqa: BLE001 - the episode fails, the worker lives on
                self.current = None  # the env may be mid-way; restore before the next use
                out.append(("err", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"))
        return out

    def close(self) -> None:
        try:
            self.env.close()
        except Exception:  # noqa: BLE001
            pass


def _worker_main(conn, env_name: str, env_kwargs: dict) -> None:
    """Loop of one local env worker process: receive a batch, answer a list of results. It ends
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


# ----------------------------------------------------------------------------- worker pools
class _Worker:
    """One slot of a pool; its back-end (a process, a Ray actor) is replaced on every restart."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid: int | None = None
        self.where = ""  # the host / Ray node it runs on
        self.proc: mp.Process | None = None  # local back-end
        self.conn = None
        self.actor = None  # Ray back-end
        self.queue: list[tuple[str, int, tuple, asyncio.Future]] = []
        self.wake = asyncio.Event()
        self.load = 0  # live episodes pinned here
        self.generation = 0  # bumps on every restart
        self.idle = False  # started and waiting for a batch (not starting, no answer pending)


class WorkerPool:
    """``workers`` env workers; ``await call(worker, op, ep, *args)`` from the event loop.

    The scheduling, batching, timeouts and restarts live here, once; a back-end says only how a
    worker starts (:meth:`_spawn`), how a batch travels (:meth:`_exchange`, raising
    :class:`WorkerDied` when the worker is gone) and how it is stopped (:meth:`_kill`,
    :meth:`_stop`). :class:`EnvPool` runs local processes, :class:`hpl_data.ray_pool.RayEnvPool`
    Ray actors.
    """

    backend = "?"

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, *, env_timeout_s: float = 120.0,
                 start_timeout_s: float = 300.0, max_batch: int = 64, counters: Counters | None = None) -> None:
        self.env_name, self.env_kwargs = env_name, dict(env_kwargs)
        self.workers = [_Worker(i) for i in range(max(1, workers))]
        self.env_timeout_s, self.start_timeout_s, self.max_batch = env_timeout_s, start_timeout_s, max_batch
        self.counters = counters or Counters()
        self._lanes: list[asyncio.Task] = []
        self._closed = False

    # --- what a back-end provides
    async def _spawn(self, w: _Worker) -> None:
        """Start worker ``w`` and wait until its env is loaded; RuntimeError if it cannot."""
        raise NotImplementedError

    async def _exchange(self, w: _Worker, batch: list[tuple[str, int, tuple]]) -> list[tuple[str, Any]]:
        raise NotImplementedError

    def _kill(self, w: _Worker) -> None:
        raise NotImplementedError

    async def _stop(self, w: _Worker) -> None:
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

    async def _start_worker(self, w: _Worker) -> None:
        w.idle = False
        await self._spawn(w)
        w.idle = True

    async def _lane(self, w: _Worker) -> None:
        while not self._closed:
            if not w.queue:
                w.wake.clear()
                await w.wake.wait()
                continue
            batch, w.queue = w.queue[: self.max_batch], w.queue[self.max_batch:]
            w.idle = False
            try:
                results = await asyncio.wait_for(self._exchange(w, [(op, ep, args) for op, ep, args, _ in batch]),
                                                 self.env_timeout_s * len(batch))
            except (WorkerDied, OSError, asyncio.TimeoutError) as e:
                reason = e if isinstance(e, WorkerDied) else WorkerDied(
                    f"env worker {w.index} (pid {w.pid}{w.where}) "
                    f"{'hung' if isinstance(e, asyncio.TimeoutError) else 'broke'}: {e!r}")
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(reason)
                await self._restart(w)
                continue
            w.idle = True
            for (*_, fut), (status, value) in zip(batch, results):
                if fut.done():
                    continue
                if status == "ok":
                    fut.set_result(value)
                elif status == "lost":
                    fut.set_exception(WorkerDied(value))
                else:
                    fut.set_exception(EnvCallError(value))

    async def _restart(self, w: _Worker) -> None:
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

    def call(self, w: _Worker, op: str, ep: int, *args: Any) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(RuntimeError("env pool is closed"))
            return fut
        w.queue.append((op, ep, args, fut))
        w.wake.set()
        return fut

    def least_loaded(self) -> _Worker:
        return min(self.workers, key=lambda w: w.load)

    def pids(self) -> list[int | None]:
        return [w.pid for w in self.workers]

    async def close(self) -> None:
        if self._closed:  # once (a failed start closes the pool, and its engine closes it again)
            return
        self._closed = True
        for w in self.workers:
            w.wake.set()
            for *_, fut in w.queue:
                if not fut.done():
                    fut.set_exception(RuntimeError("env pool closed"))
            w.queue.clear()
        for lane in self._lanes:
            lane.cancel()
        await asyncio.gather(*self._lanes, return_exceptions=True)
        await asyncio.gather(*(self._stop(w) for w in self.workers), return_exceptions=True)
        await self._after_close()


class EnvPool(WorkerPool):
    """Env workers as local processes, talking over pipes."""

    backend = "local"

    def __init__(self, env_name: str, env_kwargs: dict, workers: int, *, start_method: str = "spawn",
                 **kwargs: Any) -> None:
        super().__init__(env_name, env_kwargs, workers, **kwargs)
        # never fork a process that may hold CUDA / vLLM threads; "fork" (the env data already
        # loaded in this process, shared copy-on-write) is for callers that know it holds none
        self.ctx = mp.get_context(start_method)

    async def _spawn(self, w: _Worker) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=_worker_main, args=(child, self.env_name, self.env_kwargs), daemon=True,
                                name=f"hpl-env-{self.env_name}-{w.index}")
        with interrupts_blocked():
            proc.start()
        child.close()
        w.proc, w.conn, w.pid = proc, parent, proc.pid
        w.generation += 1
        try:
            msg = await asyncio.wait_for(self._recv(w), self.start_timeout_s)
        except (asyncio.TimeoutError, WorkerDied) as e:
            self._kill(w)
            raise RuntimeError(f"env worker {w.index} for {self.env_name} did not start: {e}") from e
        if msg[0] != "ready":
            self._kill(w)
            raise RuntimeError(f"env worker {w.index} for {self.env_name} failed to start: {msg[1]}")

    def _recv(self, w: _Worker) -> asyncio.Future:
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

    async def _exchange(self, w: _Worker, batch: list[tuple[str, int, tuple]]) -> list[tuple[str, Any]]:
        w.conn.send(batch)
        return await self._recv(w)

    def _kill(self, w: _Worker) -> None:
        if w.proc is not None and w.proc.is_alive():
            w.proc.kill()
        if w.proc is not None:
            w.proc.join(timeout=5)
        if w.conn is not None:
            w.conn.close()

    async def _stop(self, w: _Worker) -> None:
        try:
            if w.conn is not None and not w.conn.closed:
                w.conn.send(None)
        except OSError:
            pass
        if w.proc is not None:  # one still starting or mid-batch (Ctrl-C, SIGTERM) gets a short grace
            w.proc.join(timeout=5 if w.idle else 0.5)
        self._kill(w)


def make_pool(env_name: str, env_kwargs: dict, config: EngineConfig, counters: Counters) -> WorkerPool:
    """The worker back-end the config asks for: local processes, or Ray actors (``config.ray``)."""
    common = {"env_timeout_s": config.env_timeout_s, "counters": counters}
    if config.ray is not None:
        from hpl_data.ray_pool import RayEnvPool

        return RayEnvPool(env_name, env_kwargs, config.workers, address=config.ray,
                          cpus_per_worker=config.ray_cpus_per_worker, **common)
    return EnvPool(env_name, env_kwargs, config.workers, start_method=config.start_method, **common)


# ----------------------------------------------------------------------------- counters
@dataclass
class Counters:
    """Everything that costs, for the run's metadata."""

    episodes: int = 0
    failed_episodes: int = 0
    llm_calls: int = 0
    llm_errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    env_steps: int = 0
    resets: int = 0
    restores: int = 0
    replays: int = 0
    worker_restarts: int = 0
    episode_restarts: int = 0
    wall_s: float = 0.0
    llm_busy_s: float = 0.0  # wall time with at least one LLM request in flight
    peak_inflight: int = 0  # most LLM requests in flight at once
    inflight_request_s: float = 0.0  # integral of requests in flight over time (/ wall_s = mean in flight)
    _inflight: int = field(default=0, repr=False)
    _busy_since: float = field(default=0.0, repr=False)
    _changed_at: float = field(default=0.0, repr=False)

    def _account(self) -> None:
        now = time.perf_counter()
        self.inflight_request_s += self._inflight * (now - self._changed_at) if self._inflight else 0.0
        self._changed_at = now

    def llm_started(self) -> None:
        self._account()
        if self._inflight == 0:
            self._busy_since = time.perf_counter()
        self._inflight += 1
        self.peak_inflight = max(self.peak_inflight, self._inflight)

    def llm_finished(self) -> None:
        self._account()
        self._inflight -= 1
        if self._inflight == 0:
            self.llm_busy_s += time.perf_counter() - self._busy_since

    @property
    def inflight(self) -> int:
        """LLM requests in flight now."""
        return self._inflight

    def track_endpoints(self, stats: Callable[[], dict[str, dict[str, int]]]) -> None:
        """Report a multi-endpoint policy's per-endpoint counters (calls, errors, ejections,
        recoveries) as ``llm_endpoints``: what changed since now, as the policy may serve
        several engines."""
        self._endpoint_stats, self._endpoint_base = stats, stats()

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        stats = getattr(self, "_endpoint_stats", None)
        if stats is not None:
            base = self._endpoint_base
            d["llm_endpoints"] = {url: {k: v - base.get(url, {}).get(k, 0) for k, v in s.items()}
                                  for url, s in stats().items()}
        d["outside_llm_fraction"] = (1 - self.llm_busy_s / self.wall_s) if self.wall_s > 0 and self.llm_calls else None
        d["mean_inflight"] = self.inflight_request_s / self.wall_s if self.wall_s > 0 else None
        return d


# ----------------------------------------------------------------------------- engine
@dataclass
class EngineConfig:
    concurrency: int = 64  # episodes in flight
    workers: int = 2  # env worker processes
    seed: int = 0
    episode_timeout_s: float | None = None
    env_timeout_s: float = 120.0  # one batch of env calls; past it the worker is killed and restarted
    max_restarts: int = 3  # per episode, after worker deaths
    prompts: str = "default"  # default | ipr | eto: the first user message's instruction and example
    start_method: str = "spawn"  # env workers; "fork" only from a process without model/CUDA threads
    ray: str | None = None  # env workers as Ray actors: "auto" or a cluster address (None: local processes)
    ray_cpus_per_worker: float = 1.0  # CPUs a Ray env actor reserves (its node must have them free)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=256))
    # agent episodes recorded as hpl-gen's trajectory tables always had them: the agent's own name, no stop reason
    release_agent_records: bool = False


class RolloutEngine:
    """Run one episode per task id with a policy spec (agent or chat policy).

    ``policy`` is a spec string or an already built :class:`ChatPolicy` (so one vLLM engine can
    serve several runs). Use as ``async with RolloutEngine(...) as eng: await eng.run(tasks)``
    or the blocking :func:`run_rollouts`.
    """

    def __init__(self, env_name: str, policy: str | ChatPolicy, *, env_kwargs: dict | None = None,
                 config: EngineConfig | None = None, policy_options: dict | None = None) -> None:
        self.env_name = env_name
        self.config = config or EngineConfig()
        self.env_kwargs = dict(env_kwargs or {})
        per_worker = -(-self.config.concurrency // max(1, self.config.workers))
        cache_kwarg = profile(env_name).episode_cache_kwarg
        if cache_kwarg:  # keep every in-flight game loaded: switching must not evict
            self.env_kwargs.setdefault(cache_kwarg, max(8, per_worker + 1))
        self.counters = Counters()
        self._owns_policy = isinstance(policy, str)
        if isinstance(policy, str):
            self.spec: PolicySpec | None = parse_spec(policy)
            self.policy: ChatPolicy | None = None
            self.policy_options = dict(policy_options or {})
            self.policy_name = str(self.spec)
        else:
            self.spec, self.policy, self.policy_name = None, policy, policy.name
        self.pool = make_pool(env_name, self.env_kwargs, self.config, self.counters)
        self._ep_ids = iter(range(1, 1 << 62))

    async def __aenter__(self) -> RolloutEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Build the policy (from a spec) and start the workers; a failed or cancelled start (``async
        with`` then never exits) closes what it had started."""
        try:
            if self.spec is not None and not self.spec.is_agent and self.policy is None:
                from hpl_data.policies import make_chat_policy

                self.policy = make_chat_policy(self.spec, **self.policy_options)
            if hasattr(self.policy, "endpoint_stats"):
                self.counters.track_endpoints(self.policy.endpoint_stats)
            await asyncio.to_thread(self._warm_caches)
            await self.pool.start()
        except BaseException:
            await self.close()
            raise

    def _warm_caches(self) -> None:
        """Build on-disk caches (indexes, converted data) once, before the workers open them."""
        from hpl_envs import make_env

        env = make_env(self.env_name, **self.env_kwargs)
        try:
            env.warm_caches()
        finally:
            env.close()

    async def close(self) -> None:
        await self.pool.close()
        if self._owns_policy and self.policy is not None:
            await self.policy.close()

    @property
    def is_agent(self) -> bool:
        return self.spec is not None and self.spec.is_agent

    # ------------------------------------------------------------------ runs
    async def run(self, task_ids: list[str], on_episode: Callable[[dict], None] | None = None) -> list[dict]:
        """One episode per task id, results in task order; failed episodes carry ``error``."""
        start = time.perf_counter()
        gate = asyncio.Semaphore(max(1, self.config.concurrency))
        wall0 = self.counters.wall_s

        async def one(task_id: str) -> dict:
            async with gate:
                ep = await self._episode_with_timeout(str(task_id))
            self.counters.episodes += 1
            self.counters.failed_episodes += bool(ep["error"])
            self.counters.wall_s = wall0 + time.perf_counter() - start
            if on_episode:
                on_episode(ep)
            return ep

        results = await asyncio.gather(*(one(t) for t in task_ids))
        self.counters.wall_s = wall0 + time.perf_counter() - start
        return list(results)

    async def _episode_with_timeout(self, task_id: str) -> dict:
        seed = episode_seed(self.config.seed, task_id)
        ep = Episode(env=self.env_name, task_id=task_id, task_type="", instruction="", agent=self.policy_name,
                     seed=seed)
        handle = _Handle(next(self._ep_ids))
        t0 = time.perf_counter()
        try:
            coro = (self._agent_episode(ep, handle) if self.is_agent
                    else self.play(handle, ep, params=self.config.sampling, affinity=f"ep{handle.id}"))
            if self.config.episode_timeout_s:
                await asyncio.wait_for(coro, self.config.episode_timeout_s)
            else:
                await coro
        except asyncio.TimeoutError:
            ep.error, ep.stop_reason = f"episode timeout after {self.config.episode_timeout_s:.0f}s", "timeout"
        except (PolicyError, EnvCallError, WorkerDied, RuntimeError) as e:
            ep.error, ep.stop_reason = f"{type(e).__name__}: {e}", "error"
        finally:
            if handle.worker is not None:
                handle.worker.load -= 1
                self.pool.call(handle.worker, "close", handle.id).add_done_callback(_ignore)
        ep.seconds = time.perf_counter() - t0
        return ep.to_dict()

    async def _call(self, handle: _Handle, op: str, *args: Any):
        if handle.worker is None:
            handle.worker = self.pool.least_loaded()
            handle.worker.load += 1
        return await self.pool.call(handle.worker, op, handle.id, *args)

    def _lost(self, handle: _Handle, ep: Episode, err: Exception) -> None:
        ep.restarts += 1
        self.counters.episode_restarts += 1
        if ep.restarts > self.config.max_restarts:
            raise WorkerDied(f"{err} (gave up after {self.config.max_restarts} restarts)")
        handle.worker.load -= 1
        handle.worker = None  # re-pinned to the least-loaded worker

    async def _reset(self, ep: Episode, handle: _Handle, agent_spec: str | None, want_state: bool):
        obs, info, state = await self._call(handle, "reset", ep.task_id, ep.seed, agent_spec, want_state)
        self.counters.resets += 1
        ep.task_type, ep.instruction = str(info.get("task_type", "")), str(info.get("instruction", ""))
        return obs, info, state

    async def _agent_episode(self, ep: Episode, handle: _Handle) -> None:
        """An agent's episode: it plays in the worker (``agent_step``, one action a call)."""
        while True:
            try:
                ep.steps.clear()
                obs, info, _ = await self._reset(ep, handle, str(self.spec), False)
                done = False
                while not done:
                    action, thought, new_obs, reward, term, trunc, info, _ = await self._call(handle, "agent_step")
                    self.counters.env_steps += 1
                    ep.steps.append(Step(obs, action, reward, bool(info.get("action_valid", True)), thought=thought))
                    obs, done = new_obs, term or trunc
                    ep.reward, ep.terminated, ep.truncated = reward, term, trunc
                break
            except WorkerDied as e:  # the agent lived in the worker: start over, same seed
                self._lost(handle, ep, e)
        self._finish(ep, obs, info)
        if self.config.release_agent_records:
            ep.agent, ep.stop_reason = _agent_name(self.env_name, str(self.spec)), ""

    async def play(self, handle: _Handle, ep: Episode, *, params: SamplingParams, affinity: str | None = None,
                   start: str | None = None, obs: str = "", history: list[dict] | None = None,
                   first: Completion | None = None, n: int | None = None, marks: frozenset[int] = frozenset(),
                   on_mark: Callable[[int, ChatPlay], None] | None = None, save_prefix: str = "") -> ChatPlay:
        """The one loop in which the chat policy plays an episode (``hpl-eval``, collection, MC).

        From reset (``start`` None: ``ep.task_id`` with ``ep.seed``), or from the snapshot named
        ``start`` in the worker of ``handle`` with the conversation ``history`` that led to its
        observation ``obs``. Turn t is sampled with ``params`` and seed ``derive_seed(ep.seed, t)``;
        ``first`` is turn 0's completion when the caller drew it already. It plays to the end or for
        ``n`` actions (an unfinished play's snapshot is kept as ``ChatPlay.state``); after k actions,
        for each k in ``marks`` (if the episode goes on), the snapshot is kept by name and
        ``on_mark(k, the play so far)`` is called. A context overflow ends the episode as truncated
        (``stop_reason`` context_length). ``ep`` is filled as the play goes, so a failed play keeps
        its steps. From reset, every step's snapshot travels back, and a worker that dies is replaced:
        the episode is restored there and the step redone; a named snapshot lives only in its worker,
        so there a worker's death is the caller's to handle (:class:`WorkerDied`).
        """
        from hpl_envs.prompts import initial_messages
        from hpl_envs.react import format_observation, parse_react

        multiline = profile(self.env_name).multiline_actions
        state, info = None, {}
        if start is None:
            while state is None:
                try:
                    obs, info, state = await self._reset(ep, handle, None, True)
                except WorkerDied as e:
                    self._lost(handle, ep, e)
        else:
            await self._call(handle, "fork", start)
        messages = list(history) if history else initial_messages(self.env_name, obs, self.config.prompts)

        def so_far(name: str | None) -> ChatPlay:
            return ChatPlay(list(ep.steps), obs, info, list(messages), name)

        async def save() -> str:
            name = f"{save_prefix}play{handle.id}@{len(ep.steps)}"
            await self._call(handle, "save", name)
            return name

        while True:
            comp, first = first, None
            if comp is None:
                try:
                    comp = await self.chat(messages, params.replace(seed=derive_seed(ep.seed, len(ep.steps))),
                                           affinity=affinity)
                except ContextLengthError:
                    ep.truncated, ep.stop_reason = True, "context_length"
                    break
            ep.llm_calls += 1
            ep.prompt_tokens += comp.prompt_tokens
            ep.completion_tokens += comp.completion_tokens
            parsed = parse_react(comp.text, multiline=multiline)
            while True:
                try:
                    new_obs, reward, term, trunc, info, new_state = await self._call(
                        handle, "step", parsed.action, state is not None)
                    break
                except WorkerDied as e:  # restore the last snapshot elsewhere and redo the step
                    if state is None:
                        raise
                    self._lost(handle, ep, e)
                    how = await self._call(handle, "restore", state)
                    self.counters.restores += 1
                    self.counters.replays += how == "replay"
            self.counters.env_steps += 1
            ep.steps.append(Step(obs, parsed.action, reward, bool(info.get("action_valid", True)),
                                 thought=parsed.thought, raw_output=comp.text, logprob=comp.logprob,
                                 entropy=comp.mean_entropy))
            ep.reward, ep.terminated, ep.truncated = reward, term, trunc
            obs, state = new_obs, new_state
            messages.append({"role": "assistant", "content": comp.text})
            if term or trunc:
                break
            messages.append({"role": "user", "content": format_observation(obs, self.env_name)})
            if len(ep.steps) in marks and on_mark is not None:
                on_mark(len(ep.steps), so_far(await save()))
            if n is not None and len(ep.steps) >= n:
                return so_far(await save())
        self._finish(ep, obs, info)
        return so_far(None)

    async def chat(self, messages: list[dict], params: SamplingParams, affinity: str | None = None):
        """One completion from the chat policy, counted (calls, tokens, requests in flight);
        ``affinity``: see :meth:`hpl_data.policies.ChatPolicy.chat`."""
        self.counters.llm_started()
        try:
            comp = (await self.policy.chat(messages, params, affinity=affinity))[0]
        except ContextLengthError:
            raise
        except PolicyError:
            self.counters.llm_errors += 1
            raise
        finally:
            self.counters.llm_finished()
        self.counters.llm_calls += 1
        self.counters.prompt_tokens += comp.prompt_tokens
        self.counters.completion_tokens += comp.completion_tokens
        return comp

    def session(self) -> _Handle:
        """A handle pinned to the least-loaded worker on first use: an MC task keeps its named
        snapshots there, and its rollouts are episodes of the same worker."""
        return _Handle(next(self._ep_ids))

    def sibling(self, handle: _Handle) -> _Handle:
        """A new episode on the worker of ``handle`` (shares its named snapshots)."""
        h = _Handle(next(self._ep_ids), handle.worker)
        if h.worker is not None:
            h.worker.load += 1
        return h

    async def call(self, handle: _Handle, op: str, *args: Any):
        """An env-worker operation for the episode behind ``handle`` (see ``_worker_main``)."""
        return await self._call(handle, op, *args)

    def release(self, handle: _Handle) -> None:
        """The episode is over: free its slot and its state in the worker."""
        if handle.worker is not None:
            handle.worker.load -= 1
            self.pool.call(handle.worker, "close", handle.id).add_done_callback(_ignore)
            handle.worker = None

    @staticmethod
    def _finish(ep: Episode, obs: str, info: dict) -> None:
        ep.won = bool(info.get("won", False))
        ep.final_observation = obs
        ep.reward_parts = info.get("reward_parts")
        if not ep.stop_reason:
            ep.stop_reason = "done" if ep.terminated else "max_turns"


@dataclass
class ChatPlay:
    """Where a chat policy's play stands: its steps, the observation and info it reached, the
    conversation up to there, and (unfinished plays) the name of the snapshot kept there."""

    steps: list[Step]
    obs: str
    info: dict
    messages: list[dict]
    state: str | None = None


@dataclass
class _Handle:
    id: int
    worker: _Worker | None = None


@functools.lru_cache(maxsize=16)
def _agent_name(env_name: str, spec: str) -> str:
    """The name an agent gives itself (what ``rollout.run_episode`` records)."""
    from hpl_data.policies import make_agent_from_spec

    agent = make_agent_from_spec(env_name, spec)
    return getattr(agent, "name", type(agent).__name__)


def _ignore(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def run_rollouts(env_name: str, task_ids: list[str], policy: str, *, env_kwargs: dict | None = None,
                 config: EngineConfig | None = None, policy_options: dict | None = None,
                 on_episode: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Blocking helper: (episodes, counters)."""

    async def main():
        async with RolloutEngine(env_name, policy, env_kwargs=env_kwargs, config=config,
                                 policy_options=policy_options) as eng:
            eps = await eng.run(task_ids, on_episode)
            return eps, eng.counters.as_dict()

    return asyncio.run(main())
