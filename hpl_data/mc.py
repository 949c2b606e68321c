"""Monte-Carlo labelling of one task as a coroutine on the rollout engine's event loop.

A task's expert pass runs in an env worker, which keeps the snapshot before every expert action
under a name; every rollout is then an episode of that worker that starts from a named snapshot
(``fork``) instead of from reset, played by hpl's one episode loop of its kind: for a built-in/user
agent policy a whole rollout runs next to the env (one worker call, :func:`hpl_envs.agents.steps`);
for a chat policy :meth:`hpl_data.engine.RolloutEngine.play_from` asks the model for each turn and the
worker steps the env, so all rollouts of all tasks in flight share one ``concurrency`` budget and
the M rollouts from one state go to the server together (its prefix cache sees M copies of one
prompt). What is MC-specific stays here: a first action that must differ from the expert's (other
seeds tried), and where plays and values start.

Values are mean outcomes of M rollouts; rollout m of a state has its own seed
(``derive_seed(seed, task, where, t, m)``), so results do not depend on order, worker or
concurrency. In adaptive mode pairs that share no estimated value are settled concurrently; pairs
that share one are settled in a fixed order (step pairs by t, then groups), as the sequential
labeller did, so a shared value grows the same way in every run.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpl_data.conversation import episode_messages
from hpl_data.rollout import derive_seed
from hpl_data.segmenters import fixed_k, fixed_n, uncertainty
from hpl_data.workers import Op
from hpl_envs.agents import steps as agent_steps
from hpl_envs.react import format_observation, format_turn
from hpl_envs.registry import delta_bucket, length_bucket, profile

RETRIES_FOR_A_DIFFERENT_ACTION = 4


def buckets(env_name: str, length: int, delta: float) -> tuple[int, int]:
    """Length bucket 1..3 (by the env's thresholds) and ΔR bucket 1..3 (1 = largest gap)."""
    return length_bucket(env_name, length), delta_bucket(delta)


@dataclass
class Value:
    mean: float
    std: float
    n: int  # rollouts behind the mean; 0 = exact (a finished episode's outcome)
    outcomes: list[float] = field(default_factory=list)
    source: tuple | None = None  # (snapshot name, obs, info, seed key, history): where more rollouts come from

    @property
    def exact(self) -> bool:
        return self.source is None


def add(v: Value, outcomes: list[float]) -> None:
    """Add rollout outcomes to an estimated value."""
    v.outcomes.extend(outcomes)
    v.n += len(outcomes)
    v.mean = sum(v.outcomes) / v.n
    v.std = statistics.pstdev(v.outcomes) if v.n > 1 else 0.0


@dataclass
class PolicyPlay:
    actions: list[str]
    observations: list[str]  # after each action
    turns: list[str]  # assistant contents
    outcome: float | None  # the episode's reward if it ended
    obs: str
    info: dict
    history: list[dict] | None  # the LLM policy's conversation up to ``obs``
    state: str | None = None  # name of the snapshot where the play stopped (unfinished plays)


# ----------------------------------------------------------------------------- next to the env (worker)
def _agent(env_name: str, spec: str, seed: int):
    from hpl_data.policies import make_agent_from_spec

    return make_agent_from_spec(env_name, spec, seed=seed)


def worker_expert_pass(env, env_name: str, saved: dict, expert: str, task_id: str, seed: int, prefix: str) -> dict:
    """Expert episode; the snapshot before action t is kept in the worker as ``{prefix}{t}``."""
    agent = _agent(env_name, expert, derive_seed(seed, task_id, "expert"))
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    saved[f"{prefix}0"] = env.get_state()
    steps, infos = [], [info]
    reward = 0.0
    for rec in agent_steps(env, agent, obs, info):
        steps.append({"observation": obs, "action": rec.action, "thought": rec.thought})
        obs, reward = rec.obs, rec.reward
        if not rec.done:  # the state before the next action, taken before the agent acts
            saved[f"{prefix}{len(steps)}"] = env.get_state()
            infos.append(rec.info)
    return {"task_id": task_id, "task_type": infos[0].get("task_type", ""), "steps": steps,
            "states": [f"{prefix}{t}" for t in range(len(steps))], "infos": infos, "reward": reward,
            "final_observation": obs}


def worker_rollout(env, env_name: str, saved: dict, state: str, obs: str, info: dict, spec: str,
                   seed: int) -> tuple[float, int]:
    """An agent plays from a named snapshot to the end: (outcome, env steps)."""
    env.set_state(saved[state])
    agent = _agent(env_name, spec, seed)
    agent.reset(env, obs, info)
    taken, reward = 0, 0.0
    for rec in agent_steps(env, agent, obs, info):
        taken, reward = taken + 1, rec.reward
    return reward, taken


def worker_policy_steps(env, env_name: str, saved: dict, state: str, obs: str, info: dict, n: int, spec: str,
                        seeds: list[int], avoid: str | None, save_as: str) -> tuple[dict | None, int]:
    """An agent plays up to n actions from a named snapshot (the first differing from ``avoid``,
    trying ``seeds`` in turn); an unfinished play's snapshot is kept as ``save_as``."""
    env.set_state(saved[state])
    agent = _agent(env_name, spec, seeds[0])
    agent.reset(env, obs, info)
    first = agent.act(obs, info)
    for retry_seed in seeds[1:]:
        if avoid is None or first.strip() != avoid.strip():
            break
        agent = _agent(env_name, spec, retry_seed)
        agent.reset(env, obs, info)
        first = agent.act(obs, info)
    if avoid is not None and first.strip() == avoid.strip():
        return None, 0
    actions, observations, turns = [], [], []
    outcome = None
    for rec in agent_steps(env, agent, obs, info, max_actions=n, first_action=first):
        turns.append(format_turn(rec.action, None, env_name))
        actions.append(rec.action)
        observations.append(rec.obs)
        obs, info = rec.obs, rec.info
        if rec.done:
            outcome = rec.reward
    if outcome is None:
        saved[save_as] = env.get_state()
    return {"actions": actions, "observations": observations, "turns": turns, "outcome": outcome, "obs": obs,
            "info": info, "history": None, "state": None if outcome is not None else save_as}, len(actions)


def worker_first_actions(env, env_name: str, saved: dict, state: str, obs: str, info: dict, spec: str,
                         seeds: list[int]) -> list[str]:
    """The first action an agent takes from a named snapshot, once per seed (entropy estimate)."""
    actions = []
    for seed in seeds:
        env.set_state(saved[state])
        agent = _agent(env_name, spec, seed)
        agent.reset(env, obs, info)
        actions.append(agent.act(obs, info))
    return actions


# ----------------------------------------------------------------------------- on the event loop
def _policy_play(play, outcome: float | None) -> PolicyPlay:
    """A chat play (:class:`hpl_data.engine.ChatPlay`) as MC uses it; an ended play keeps no
    history or snapshot (nothing starts from there)."""
    steps = play.steps
    observations = [s.observation for s in steps[1:]] + ([play.obs] if steps else [])
    ended = outcome is not None
    return PolicyPlay([s.action for s in steps], observations, [s.raw_output for s in steps], outcome, play.obs,
                      play.info, None if ended else play.messages, None if ended else play.state)


def entropy_of(actions: list[str]) -> float:
    """Entropy (nats) of the empirical distribution of sampled actions."""
    counts = Counter(a.strip() for a in actions)
    n = len(actions)
    return -sum(c / n * math.log(c / n) for c in counts.values())


@dataclass
class MCSettings:
    """What a labeller needs besides the engine (from :class:`hpl_data.gen.GenConfig`)."""

    policy: str
    rollouts: int = 3
    seed: int = 0
    adaptive: bool = False
    min_rollouts: int = 2
    confidence: float = 0.8  # 1 - δ of the Hoeffding bound
    outcome_range: float = 1.0
    outcome_low: float = 0.0  # lowest outcome (curtailment bounds the means to the env's reward range)
    curtail: bool = False  # adaptive: also stop once the fixed-M decision (ΔR > 0 or not) is certain;
    # values then start from one rollout and grow only as far as a decision needs (expert side first)
    share_rollouts: bool = True  # chat policies: rollout 0 from an expert state also gives the plays from it
    prompts: str = "default"
    temperature: float = 1.0
    max_tokens: int = 256


class TaskLabeler:
    """One task's expert pass, values and policy plays, on the engine's loop.

    ``slots`` is the run-wide budget of rollouts (and policy plays, entropy samples) in flight;
    ``live`` is a run-wide Counter (``rollouts_done``, ``rollouts_in_flight``) for progress display.
    """

    def __init__(self, engine, settings: MCSettings, slots: asyncio.Semaphore, counters: Counter | None = None,
                 live: Counter | None = None):
        from hpl_data.policies import SamplingParams, parse_spec

        self.engine, self.s, self.slots = engine, settings, slots
        self.env_name = engine.env_name
        self.multiline = profile(self.env_name).multiline_actions
        self.counters = counters if counters is not None else Counter()
        self.live = live if live is not None else Counter()
        self.is_agent = parse_spec(settings.policy).is_agent
        # rollouts keep only the text of each turn: no log-probs asked for (less work for the server)
        self.params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens, logprobs=False)
        self.handle = engine.session()
        self.prefix = f"t{self.handle.id}:"
        self._names = iter(range(1 << 62))
        self.min_rollouts = max(1, min(settings.min_rollouts, settings.rollouts))
        # rollouts a value starts with: M (fixed), min_rollouts (adaptive), or 1 with curtailment, which
        # decides exactly as fixed M does and so needs no statistical minimum to start from
        self.first_rollouts = (1 if settings.curtail else self.min_rollouts) if settings.adaptive else settings.rollouts

    def _name(self) -> str:
        return f"{self.prefix}p{next(self._names)}"

    async def _run(self, fn: str, *args: Any):
        return await self.engine.call(self.handle, Op.RUN, f"hpl_data.mc:{fn}", *args)

    async def close(self) -> None:
        if self.handle.worker is not None:
            try:
                await self.engine.call(self.handle, Op.DROP, self.prefix)
            except Exception:  # noqa: BLE001 - a dead worker dropped them already
                pass
        self.engine.release(self.handle)

    async def expert_pass(self, expert: str, task_id: str) -> dict:
        return await self._run("worker_expert_pass", expert, task_id, self.s.seed, f"{self.prefix}e")

    # ---------------------------------------------------------------- chat policy plays
    async def _chat_play(self, state: str, obs: str, history: list[dict] | None, key: tuple, n: int | None,
                         avoid: str | None = None, marks: frozenset[int] = frozenset(),
                         on_mark: Callable[[int, PolicyPlay], None] | None = None) -> PolicyPlay | None:
        """The chat policy plays from a named snapshot (:meth:`RolloutEngine.play_from`): n actions
        (None: to the end), its first action differing from ``avoid`` (tried with other seeds;
        None if it never does); ``marks``/``on_mark`` as there, with the play so far as a
        :class:`PolicyPlay`."""
        from hpl_data.engine import Branch
        from hpl_data.policies import ContextLengthError
        from hpl_envs.prompts import initial_messages
        from hpl_envs.react import parse_react

        base = list(history) if history else initial_messages(self.env_name, obs, self.s.prompts)

        async def first_turn(agent_seed: int):  # turn 0, drawn here to compare it with ``avoid``
            comp = await self.engine.chat(base, self.params.replace(seed=derive_seed(agent_seed, 0)),
                                          affinity=self.prefix)  # one task's rollouts: one server
            return comp, parse_react(comp.text, multiline=self.multiline).action

        agent_seed = derive_seed(self.s.seed, *key)
        try:
            comp, action = await first_turn(agent_seed)
            tries = 0
            while avoid is not None and action.strip() == avoid.strip() and tries < RETRIES_FOR_A_DIFFERENT_ACTION:
                tries += 1
                agent_seed = derive_seed(self.s.seed, *key, "retry", tries)
                comp, action = await first_turn(agent_seed)
        except ContextLengthError:
            self.counters["rollouts_context_length"] += 1
            return None if n is not None else PolicyPlay([], [], [], 0.0, obs, {}, None)
        if avoid is not None and action.strip() == avoid.strip():
            return None
        branch = Branch(seed=agent_seed, state=state, obs=obs, history=base, first=comp, n=n, marks=marks,
                        on_mark=None if on_mark is None else lambda k, p: on_mark(k, _policy_play(p, None)),
                        save_prefix=self.prefix)
        h = self.engine.sibling(self.handle)
        try:
            play = await self.engine.play_from(h, branch, params=self.params, affinity=self.prefix)
        finally:
            self.engine.release(h)
        self.counters["env_steps"] += len(play.steps)
        if play.stop_reason == "context_length":  # ends unfinished: outcome 0, like a truncated episode
            self.counters["rollouts_context_length"] += 1
            return _policy_play(play, 0.0)
        return _policy_play(play, play.reward if play.stop_reason else None)

    # ---------------------------------------------------------------- the three primitives
    async def rollout(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None) -> float:
        return (await self.rollout_play(state, obs, info, key, history)).outcome

    async def rollout_play(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None,
                           marks: frozenset[int] = frozenset(),
                           on_mark: Callable[[int, PolicyPlay], None] | None = None) -> PolicyPlay:
        """One rollout to the end; a chat policy's play is returned whole (an agent's: the outcome
        only); ``marks``/``on_mark`` as in :meth:`_chat_play`."""
        async with self.slots:
            self.counters["restores"] += 1
            self.counters["rollouts"] += 1
            self.live["rollouts_in_flight"] += 1
            try:
                if self.is_agent:
                    outcome, steps = await self._run("worker_rollout", state, obs, info, self.s.policy,
                                                     derive_seed(self.s.seed, *key))
                    self.counters["env_steps"] += steps
                    play = PolicyPlay([], [], [], outcome, obs, info, None)
                else:
                    play = await self._chat_play(state, obs, history, key, None, marks=marks, on_mark=on_mark)
            finally:
                self.live["rollouts_in_flight"] -= 1
            self.live["rollouts_done"] += 1
            return play

    async def policy_steps(self, state: str, obs: str, info: dict, n: int, key: tuple, avoid: str | None = None,
                           history: list[dict] | None = None) -> PolicyPlay | None:
        async with self.slots:
            self.counters["restores"] += 1
            if not self.is_agent:
                return await self._chat_play(state, obs, history, key, n, avoid)
            seeds = [derive_seed(self.s.seed, *key)]
            if avoid is not None:
                seeds += [derive_seed(self.s.seed, *key, "retry", i)
                          for i in range(1, RETRIES_FOR_A_DIFFERENT_ACTION + 1)]
            play, steps = await self._run("worker_policy_steps", state, obs, info, n, self.s.policy, seeds, avoid,
                                          self._name())
            self.counters["env_steps"] += steps
            return None if play is None else PolicyPlay(**play)

    async def entropy(self, state: str, obs: str, info: dict, samples: int, key: tuple,
                      history: list[dict] | None = None) -> float:
        seeds = [derive_seed(self.s.seed, *key, "entropy", i) for i in range(samples)]
        if self.is_agent:
            async with self.slots:
                return entropy_of(await self._run("worker_first_actions", state, obs, info, self.s.policy, seeds))
        from hpl_data.policies import ContextLengthError
        from hpl_envs.prompts import initial_messages
        from hpl_envs.react import parse_react

        messages = list(history) if history else initial_messages(self.env_name, obs, self.s.prompts)

        async def sample(seed: int) -> str:
            async with self.slots:
                try:
                    comp = await self.engine.chat(messages, self.params.replace(seed=derive_seed(seed, 0)),
                                                affinity=self.prefix)
                except ContextLengthError:
                    return ""
                return parse_react(comp.text, multiline=self.multiline).action

        return entropy_of(list(await asyncio.gather(*(sample(s) for s in seeds))))

    # ---------------------------------------------------------------- values
    async def value(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None = None) -> Value:
        """Mean outcome of policy rollouts from a snapshot: ``first_rollouts`` of them (M; in
        adaptive mode ``min_rollouts``, or one with curtailment), :meth:`extend` adds more."""
        v = Value(0.0, 0.0, 0, [], (state, obs, info, key, history))
        await self.extend(v, self.first_rollouts)
        return v

    async def extend(self, v: Value, n: int) -> None:
        """Grow ``v`` to ``n`` rollouts, all sent together (rollout m always has the same seed)."""
        if v.exact:
            return
        state, obs, info, key, history = v.source
        ms = range(v.n, min(n, self.s.rollouts))
        add(v, await asyncio.gather(*(self.rollout(state, obs, info, (*key, m), history) for m in ms)))

    async def settle(self, chosen: Value, rejected: Value) -> None:
        """Adaptive mode: add rollouts until the sign of ΔR is settled or both sides have M.

        Settled means: the Hoeffding bound on ΔR excludes 0 (at ``confidence``), or, with
        ``curtail``, whatever the missing rollouts return, ΔR at M rollouts per side keeps its sign
        (so the pair is kept or dropped exactly as a fixed-M run with the same seeds decides).
        """
        if not self.s.adaptive:
            return
        log_term = math.log(2 / (1 - self.s.confidence)) / 2
        while True:
            sides = [v for v in (chosen, rejected) if not v.exact]
            inv = sum(1 / v.n for v in sides)
            half = self.s.outcome_range * math.sqrt(log_term * inv)
            early = any(v.n < self.s.rollouts for v in sides)
            if abs(chosen.mean - rejected.mean) > half and all(v.n >= self.min_rollouts for v in sides):
                self.counters["pairs_settled_early"] += early
                return
            if self.s.curtail and early and self._decided(chosen, rejected):
                self.counters["pairs_settled_early"] += 1
                self.counters["pairs_curtailed"] += 1
                return
            open_sides = [v for v in sides if v.n < self.s.rollouts]
            if not open_sides:
                return
            if self.s.curtail:
                # the expert's value first: other pairs (the step pair before it, the groups ending at
                # its state) reuse its rollouts, and a low expert value decides the drop on its own
                side = open_sides[0]
            else:
                side = min(open_sides, key=lambda v: v.n)
            await self.extend(side, side.n + 1)

    def _final_mean_bounds(self, v: Value) -> tuple[float, float]:
        """The lowest and highest mean ``v`` can reach at M rollouts."""
        if v.exact or v.n >= self.s.rollouts:
            return v.mean, v.mean
        lo, hi = self.s.outcome_low, self.s.outcome_low + self.s.outcome_range
        total, missing = sum(v.outcomes), self.s.rollouts - v.n
        return (total + missing * lo) / self.s.rollouts, (total + missing * hi) / self.s.rollouts

    def _decided(self, chosen: Value, rejected: Value) -> bool:
        c_lo, c_hi = self._final_mean_bounds(chosen)
        r_lo, r_hi = self._final_mean_bounds(rejected)
        return c_lo - r_hi > 0 or c_hi - r_lo <= 0


async def settle_all(lab: TaskLabeler, pairs: list[tuple[Value, Value]]) -> None:
    """Settle pairs concurrently, each after the earlier pairs (in list order) that share one of
    its values: a shared value grows exactly as when the pairs are settled one by one."""
    last: dict[int, asyncio.Future] = {}
    jobs: list[asyncio.Future] = []

    async def after(deps: list[asyncio.Future], chosen: Value, rejected: Value) -> None:
        for d in deps:
            await d
        await lab.settle(chosen, rejected)

    for chosen, rejected in pairs:
        shared = [v for v in (chosen, rejected) if not v.exact]
        job = asyncio.ensure_future(after([last[id(v)] for v in shared if id(v) in last], chosen, rejected))
        last.update({id(v): job for v in shared})
        jobs.append(job)
    try:
        await asyncio.gather(*jobs)
    finally:
        for j in jobs:
            j.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)


def segment(kind: str, arg: float | None, length: int, entropies: list[float] | None,
            threshold: float | None) -> list[tuple[int, int]]:
    if kind == "fixed-n":
        return fixed_n(length, int(arg))
    if kind == "fixed-k":
        return fixed_k(length, int(arg))
    if kind == "uncertainty":
        return uncertainty(entropies or [0.0] * length, threshold if threshold is not None else float("inf"))
    raise ValueError(f"segmenter {kind!r} is not supported by this builder")


async def expert_entropies(lab: TaskLabeler, expert: str, task_id: str, samples: int) -> list[float]:
    """Policy action entropy at every expert state of a task (the uncertainty segmenter's input)."""
    ex = await lab.expert_pass(expert, task_id)
    msgs = episode_messages(lab.env_name, ex, lab.s.prompts)
    return list(await asyncio.gather(*(
        lab.entropy(ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t], samples, (task_id, t),
                    msgs[: 1 + 2 * t]) for t in range(len(ex["steps"])))))


async def label_task(lab: TaskLabeler, split: str, ex: dict, *, expert: str, levels: set[str],
                     groups: list[tuple[int, int]], segmenter: str) -> tuple[list[dict], list[dict]]:
    """Step and group pairs for one task, from its expert pass.

    Every policy play and value is started at once (their rollouts share the run's budget); the
    pairs are then settled and written in a fixed order (step pairs by t, then groups).
    """
    s, env_name, counters = lab.s, lab.env_name, lab.counters
    T = len(ex["steps"])
    messages = episode_messages(env_name, ex, s.prompts)
    tid = ex["task_id"]
    values: dict[int, asyncio.Task] = {T: _done(Value(ex["reward"], 0.0, 0))}
    estimated: list[Value] = []
    first: dict[int, asyncio.Task] = {}  # t -> rollout 0 from expert state t, whole (shared plays)
    n0 = lab.first_rollouts
    # One rollout tree (chat policies): rollout 0 from expert state t starts with a policy action
    # at t, so its first action is the step alternative at t (when it differs from the expert's)
    # and its first n actions are the policy's play of a group starting at t; the rest of it is
    # one rollout of that play's value. Same distributions, fewer LLM calls.
    share = s.share_rollouts and not lab.is_agent
    planned = ({t + 1 for t in range(T)} if "step" in levels else set()) | (
        {b for _, b in groups} if "group" in levels else set())
    planned.discard(T)
    marks_at = {t: frozenset(({1} if "step" in levels else set())
                             | {b - a for a, b in groups if a == t and "group" in levels}) for t in planned}

    def source(t: int) -> tuple:
        return ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t], (tid, "exp", t), messages[: 1 + 2 * t]

    async def shared_value(t: int) -> Value:
        state, obs, info, key, history = src = source(t)
        plays = await asyncio.gather(first[t], *(lab.rollout(state, obs, info, (*key, m), history)
                                                 for m in range(1, n0)))
        v = Value(0.0, 0.0, 0, [], src)
        add(v, [plays[0].outcome, *plays[1:]])
        return v

    requested: set[int] = set()

    marked: dict[int, dict[int, asyncio.Future]] = {}  # t -> k -> rollout 0's play after k actions (or None)

    def start_first_rollout(t: int) -> None:
        state, obs, info, key, history = source(t)
        futs = marked[t] = {k: asyncio.get_running_loop().create_future() for k in marks_at[t]}

        def on_mark(k: int, play: PolicyPlay) -> None:
            if not futs[k].done():
                futs[k].set_result(play)

        def ended(_: asyncio.Future) -> None:  # marks not reached (episode over, or failed): None
            for f in futs.values():
                if not f.done():
                    f.set_result(None)

        first[t] = asyncio.ensure_future(lab.rollout_play(state, obs, info, (*key, 0), history, marks_at[t], on_mark))
        first[t].add_done_callback(ended)

    def v_expert(t: int, count: bool = True) -> asyncio.Task:
        if count:
            counters["values_reused"] += t in requested
            requested.add(t)
        if t not in values:
            if share and t in planned:
                start_first_rollout(t)
                values[t] = asyncio.ensure_future(shared_value(t))
            else:
                values[t] = asyncio.ensure_future(lab.value(*source(t)))
            values[t].add_done_callback(
                lambda f: estimated.append(f.result()) if not f.cancelled() and f.exception() is None else None)
        return values[t]

    async def shared_play(start: int, n: int, key: tuple, avoid: str | None) -> tuple[PolicyPlay, Value] | None:
        """The first n actions of rollout 0 from expert state ``start`` as a policy play, and its value
        (that rollout's outcome plus fresh rollouts from the play's end, started as soon as rollout 0
        gets there); None if it cannot serve."""
        if start not in marked or n not in marked[start]:
            return None
        play = await marked[start][n]
        if play is None:  # rollout 0 ended (or failed) within n actions: the whole of it is the play
            p0 = await first[start]
            if not p0.actions or len(p0.actions) > n or (avoid is not None and p0.actions[0].strip() == avoid.strip()):
                return None
            counters["plays_shared"] += 1
            return p0, Value(p0.outcome, 0.0, 0)
        if avoid is not None and play.actions[0].strip() == avoid.strip():
            return None
        counters["plays_shared"] += 1
        counters["rollouts_shared"] += 1
        v = Value(0.0, 0.0, 0, [], (play.state, play.obs, play.info, (*key, "v"), play.history))
        outcomes = await asyncio.gather(first[start], *(lab.rollout(play.state, play.obs, play.info, (*key, "v", m),
                                                                    play.history) for m in range(1, n0)))
        add(v, [outcomes[0].outcome, *outcomes[1:]])
        estimated.append(v)
        return play, v

    async def play_and_value(start: int, n: int, key: tuple, avoid: str | None) -> tuple[PolicyPlay | None, Value]:
        shared = await shared_play(start, n, key, avoid) if share else None
        if shared is not None:
            return shared
        play = await lab.policy_steps(ex["states"][start], ex["steps"][start]["observation"], ex["infos"][start], n,
                                      key, avoid=avoid, history=messages[: 1 + 2 * start])
        if play is None:
            return None, None
        if play.outcome is not None:
            return play, Value(play.outcome, 0.0, 0)
        v = await lab.value(play.state, play.obs, play.info, (*key, "v"), play.history)
        estimated.append(v)
        return play, v

    async def step_pair(t: int):
        play, v = await play_and_value(t, 1, (tid, "alt", t), ex["steps"][t]["action"])
        return play, v, (await v_expert(t + 1) if play is not None else None)

    async def group_pair(start: int, end: int):
        v_exp = v_expert(end)
        play, v = await play_and_value(start, end - start, (tid, "grp", start, end), None)
        return play, v, await v_exp

    if share:  # the expert values the pairs will ask for, started first: their rollouts 0 feed the plays
        for t in sorted(planned):
            v_expert(t, count=False)
    step_jobs = [asyncio.ensure_future(step_pair(t)) for t in range(T)] if "step" in levels else []
    group_jobs = [asyncio.ensure_future(group_pair(a, b)) for a, b in groups] if "group" in levels else []
    try:
        step_results = [await j for j in step_jobs]
        group_results = [await j for j in group_jobs]
    finally:
        for j in [*step_jobs, *group_jobs, *values.values(), *first.values()]:
            j.cancel()
        await asyncio.gather(*step_jobs, *group_jobs, *values.values(), *first.values(), return_exceptions=True)

    if s.adaptive:  # settle every valued pair (shared values in the fixed order), then write rows
        await settle_all(lab, [(v_exp, v_alt) for alt, v_alt, v_exp in step_results if alt is not None]
                         + [(v_exp, v_pol) for pol, v_pol, v_exp in group_results if pol is not None])
    base = {"env": env_name, "split": split, "task_id": tid, "task_type": ex["task_type"], "policy_id": s.policy,
            "expert_id": expert, "seed": s.seed, "n_rollouts": s.rollouts}
    step_rows, group_rows = [], []
    for t, (alt, v_alt, v_exp) in enumerate(step_results):
        if alt is None:
            counters["step_no_alternative"] += 1
            continue
        counters["pairs_labelled"] += 1  # valued comparisons, kept or not (ΔR > 0 keeps them)
        delta = v_exp.mean - v_alt.mean
        if delta <= 0:
            continue
        lb, db = buckets(env_name, 1, delta)
        step_rows.append({**base, "prompt": messages[: 1 + 2 * t], "chosen": [messages[1 + 2 * t]],
                          "rejected": [{"role": "assistant", "content": alt.turns[0]}],
                          "level": "step", "group_start": t, "group_length": 1, "chosen_reward": v_exp.mean,
                          "rejected_reward": v_alt.mean, "chosen_std": v_exp.std, "rejected_std": v_alt.std,
                          "n_rollouts": max(v_exp.n, v_alt.n) if s.adaptive else s.rollouts,
                          "delta_r": delta, "length_bucket": lb, "delta_bucket": db, "bucket": f"B{lb}{db}",
                          "segmenter": "", "chosen_outcomes": list(v_exp.outcomes),
                          "rejected_outcomes": list(v_alt.outcomes)})
    for (start, end), (pol, v_pol, v_exp) in zip(groups if "group" in levels else [], group_results):
        if pol is None:  # the policy could not act here (its context overflowed)
            counters["group_no_policy_play"] += 1
            continue
        counters["pairs_labelled"] += 1
        delta = v_exp.mean - v_pol.mean
        if delta <= 0:
            continue
        rejected = []
        for i, turn in enumerate(pol.turns):
            rejected.append({"role": "assistant", "content": turn})
            if i + 1 < len(pol.turns):
                rejected.append({"role": "user", "content": format_observation(pol.observations[i], env_name)})
        lb, db = buckets(env_name, end - start, delta)
        group_rows.append({**base, "prompt": messages[: 1 + 2 * start], "chosen": messages[1 + 2 * start: 2 * end],
                           "rejected": rejected, "level": "group", "group_start": start, "group_length": end - start,
                           "chosen_reward": v_exp.mean, "rejected_reward": v_pol.mean, "chosen_std": v_exp.std,
                           "n_rollouts": max(v_exp.n, v_pol.n) if s.adaptive else s.rollouts,
                           "rejected_std": v_pol.std, "delta_r": delta, "length_bucket": lb, "delta_bucket": db,
                           "bucket": f"B{lb}{db}", "segmenter": segmenter,
                           "chosen_outcomes": list(v_exp.outcomes), "rejected_outcomes": list(v_pol.outcomes)})
    if s.adaptive:  # rollouts a fixed-M run would have drawn for the same values
        counters["rollouts_saved"] += sum(s.rollouts - v.n for v in estimated)
    return step_rows, group_rows


def _done(value: Value) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut
