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
  a chat policy plays through :meth:`RolloutEngine.play` from reset (``hpl-eval``, collection)
  or :meth:`RolloutEngine.play_from` a named snapshot and the conversation that led to it (a
  :class:`Branch`: MC rollouts and plays); both share one loop.
* An episode that fails (LLM errors after retries, env exceptions, its timeout) is recorded with
  the reason; it never stops the run.
* Workers (:mod:`hpl_data.workers`) are local processes (``EnvPool``) or Ray actors spread over
  a cluster (``RayEnvPool``, ``EngineConfig.ray``): two back-ends of one ``WorkerPool``, so
  scheduling, fault handling and counters are the same code for both; they talk the typed
  protocol of :mod:`hpl_data.workers.protocol`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpl_data.counters import Counters
from hpl_data.policies import (
    ChatPolicy,
    Completion,
    ContextLengthError,
    PolicyError,
    PolicySpec,
    SamplingParams,
    parse_spec,
)
from hpl_data.rollout import Episode, Step, derive_seed, episode_seed
from hpl_data.workers import EnvCallError, Op, StepResult, WorkerDied, WorkerSlot, make_pool
from hpl_envs.registry import profile

__all__ = ["Branch", "ChatPlay", "Counters", "EngineConfig", "EnvCallError", "RolloutEngine", "WorkerDied",
           "run_rollouts"]


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
        except TimeoutError:
            ep.error, ep.stop_reason = f"episode timeout after {self.config.episode_timeout_s:.0f}s", "timeout"
        except (PolicyError, EnvCallError, WorkerDied, RuntimeError) as e:
            ep.error, ep.stop_reason = f"{type(e).__name__}: {e}", "error"
        finally:
            self.release(handle)
        ep.seconds = time.perf_counter() - t0
        return ep.to_dict()

    async def _call(self, handle: _Handle, op: Op, *args: Any):
        if handle.worker is None:
            handle.worker = self.pool.least_loaded()
            handle.worker.load += 1
        return await self.pool.call(handle.worker, op, handle.id, *args)

    def _lost(self, handle: _Handle, record: Episode | ChatPlay, err: Exception) -> None:
        record.restarts += 1
        self.counters.episode_restarts += 1
        if record.restarts > self.config.max_restarts:
            raise WorkerDied(f"{err} (gave up after {self.config.max_restarts} restarts)")
        handle.worker.load -= 1
        handle.worker = None  # re-pinned to the least-loaded worker

    async def _reset(self, ep: Episode, handle: _Handle, agent_spec: str | None, want_state: bool):
        reset = await self._call(handle, Op.RESET, ep.task_id, ep.seed, agent_spec, want_state)
        self.counters.resets += 1
        ep.task_type, ep.instruction = str(reset.info.get("task_type", "")), str(reset.info.get("instruction", ""))
        return reset

    async def _agent_episode(self, ep: Episode, handle: _Handle) -> None:
        """An agent's episode: it plays in the worker (``agent_step``, one action a call)."""
        while True:
            try:
                ep.steps.clear()
                reset = await self._reset(ep, handle, str(self.spec), False)
                obs, info, done = reset.obs, reset.info, False
                while not done:
                    step = await self._call(handle, Op.AGENT_STEP)
                    self.counters.env_steps += 1
                    ep.steps.append(Step(obs, step.action, step.reward, bool(step.info.get("action_valid", True)),
                                         thought=step.thought))
                    obs, info, done = step.obs, step.info, step.done
                    ep.reward, ep.terminated, ep.truncated = step.reward, step.terminated, step.truncated
                break
            except WorkerDied as e:  # the agent lived in the worker: start over, same seed
                self._lost(handle, ep, e)
        self._finish(ep, obs, info)
        if self.config.release_agent_records:
            ep.agent, ep.stop_reason = _agent_name(self.env_name, str(self.spec)), ""

    # ------------------------------------------------------------------ chat plays
    async def play(self, handle: _Handle, ep: Episode, *, params: SamplingParams,
                   affinity: str | None = None) -> ChatPlay:
        """The chat policy plays ``ep.task_id`` (seed ``ep.seed``) from reset to the end
        (``hpl-eval``, collection). ``ep`` is filled as the play goes, so a failed play keeps its
        steps. Every step's snapshot travels back, so a worker that dies is replaced: the episode is
        restored there and the step redone (up to ``max_restarts``). Turn t is sampled with
        ``params`` and seed ``derive_seed(ep.seed, t)``; a context overflow ends the episode as
        truncated (``stop_reason`` context_length)."""
        from hpl_envs.prompts import initial_messages

        snapshot = None
        while snapshot is None:
            try:
                reset = await self._reset(ep, handle, None, True)
                snapshot = reset.state
            except WorkerDied as e:
                self._lost(handle, ep, e)
        run = _Playing(ep, ep.seed, reset.obs, reset.info,
                       initial_messages(self.env_name, reset.obs, self.config.prompts), snapshot)
        play = await self._play_loop(handle, run, params, affinity)
        self._finish(ep, run.obs, run.info)
        return play

    async def play_from(self, handle: _Handle, branch: Branch, *, params: SamplingParams,
                        affinity: str | None = None) -> ChatPlay:
        """The chat policy plays on from the snapshot ``branch.state`` in the worker of ``handle``
        (MC rollouts and plays), with the conversation that led there; see :class:`Branch` for the
        options. A named snapshot lives only in its worker, so a worker's death here is the
        caller's to handle (:class:`WorkerDied`)."""
        await self._call(handle, Op.FORK, branch.state)
        run = _Playing(ChatPlay([], branch.obs, {}, []), branch.seed, branch.obs, {}, list(branch.history))
        return await self._play_loop(handle, run, params, affinity, branch)

    async def _play_loop(self, handle: _Handle, run: _Playing, params: SamplingParams, affinity: str | None,
                         branch: Branch | None = None) -> ChatPlay:
        """The one loop of a chat play, filling ``run.record`` turn by turn: to the end, or (a
        branch) for ``branch.n`` actions, naming the snapshot after each of ``branch.marks``."""
        from hpl_envs.react import format_observation, parse_react

        multiline = profile(self.env_name).multiline_actions
        record, first = run.record, branch.first if branch is not None else None
        while True:
            comp, first = first, None
            if comp is None and (comp := await self._turn(run, params, affinity)) is None:
                break  # the context overflowed: the episode ends truncated
            record.llm_calls += 1
            record.prompt_tokens += comp.prompt_tokens
            record.completion_tokens += comp.completion_tokens
            parsed = parse_react(comp.text, multiline=multiline)
            step = await self._step(handle, run, parsed.action)
            self.counters.env_steps += 1
            record.steps.append(Step(run.obs, parsed.action, step.reward, bool(step.info.get("action_valid", True)),
                                     thought=parsed.thought, raw_output=comp.text, logprob=comp.logprob,
                                     entropy=comp.mean_entropy))
            record.reward, record.terminated, record.truncated = step.reward, step.terminated, step.truncated
            run.obs, run.info, run.snapshot = step.obs, step.info, step.state
            run.messages.append({"role": "assistant", "content": comp.text})
            if step.done:
                break
            run.messages.append({"role": "user", "content": format_observation(run.obs, self.env_name)})
            if branch is not None and (stop := await self._at_mark(handle, run, branch)) is not None:
                return stop
        if not record.stop_reason:
            record.stop_reason = "done" if record.terminated else "max_turns"
        return run.so_far(None)

    async def _turn(self, run: _Playing, params: SamplingParams, affinity: str | None) -> Completion | None:
        """The policy's completion for the next turn; None when the context overflowed."""
        try:
            return await self.chat(run.messages, params.replace(seed=derive_seed(run.seed, len(run.record.steps))),
                                   affinity=affinity)
        except ContextLengthError:
            run.record.truncated, run.record.stop_reason = True, "context_length"
            return None

    async def _step(self, handle: _Handle, run: _Playing, action: str) -> StepResult:
        """One env step; from reset, a dead worker's episode is restored elsewhere and the step redone."""
        while True:
            try:
                return await self._call(handle, Op.STEP, action, run.snapshot is not None)
            except WorkerDied as e:
                if run.snapshot is None:
                    raise
                self._lost(handle, run.record, e)
                how = await self._call(handle, Op.RESTORE, run.snapshot)
                self.counters.restores += 1
                self.counters.replays += how == "replay"

    async def _at_mark(self, handle: _Handle, run: _Playing, branch: Branch) -> ChatPlay | None:
        """After k actions: name the snapshot for a mark (and report the play so far); the play so
        far when it has made its ``branch.n`` actions, else None (it goes on)."""
        k = len(run.record.steps)
        if k in branch.marks and branch.on_mark is not None:
            branch.on_mark(k, run.so_far(await self._save(handle, branch.save_prefix, k)))
        if branch.n is not None and k >= branch.n:
            return run.so_far(await self._save(handle, branch.save_prefix, k))
        return None

    async def _save(self, handle: _Handle, prefix: str, k: int) -> str:
        name = f"{prefix}play{handle.id}@{k}"
        await self._call(handle, Op.SAVE, name)
        return name

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

    # ------------------------------------------------------------------ handles
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

    async def call(self, handle: _Handle, op: Op, *args: Any):
        """An env-worker operation for the episode behind ``handle`` (:class:`hpl_data.workers.Op`)."""
        return await self._call(handle, op, *args)

    def release(self, handle: _Handle) -> None:
        """The episode is over: free its slot and its state in the worker."""
        if handle.worker is not None:
            handle.worker.load -= 1
            self.pool.call(handle.worker, Op.CLOSE, handle.id).add_done_callback(_ignore)
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
    conversation up to there, (unfinished plays) the name of the snapshot kept there, and what
    the play cost and how it ended (``stop_reason`` is empty while it goes on)."""

    steps: list[Step]
    obs: str
    info: dict
    messages: list[dict]
    state: str | None = None
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    stop_reason: str = ""  # done | max_turns | context_length once it ended
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class Branch:
    """Where an MC play starts and how far it goes (:meth:`RolloutEngine.play_from`).

    The snapshot named ``state`` in the worker, its observation ``obs`` and the conversation
    ``history`` that led there; turn t is sampled with seed ``derive_seed(seed, t)``, and ``first``
    is turn 0's completion when the caller drew it already. The play goes to the end or for ``n``
    actions (an unfinished play's snapshot is kept as ``ChatPlay.state``); after k actions, for each
    k in ``marks`` (if the episode goes on), the snapshot is kept by name (prefixed ``save_prefix``)
    and ``on_mark(k, the play so far)`` is called.
    """

    seed: int
    state: str
    obs: str
    history: list[dict]
    first: Completion | None = None
    n: int | None = None
    marks: frozenset[int] = frozenset()
    on_mark: Callable[[int, ChatPlay], None] | None = None
    save_prefix: str = ""


@dataclass
class _Playing:
    """A chat play in progress: what it fills (an :class:`Episode` or a :class:`ChatPlay`), its
    turn seed, where it stands, and (from reset) the last snapshot that travelled back."""

    record: Episode | ChatPlay
    seed: int
    obs: str
    info: dict
    messages: list[dict]
    snapshot: Any = None

    def so_far(self, name: str | None) -> ChatPlay:
        r = self.record
        return ChatPlay(list(r.steps), self.obs, self.info, list(self.messages), name, r.reward, r.terminated,
                        r.truncated, r.stop_reason, r.llm_calls, r.prompt_tokens, r.completion_tokens, r.restarts)


@dataclass
class _Handle:
    id: int  # the episode's slot in its worker
    worker: WorkerSlot | None = None


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
