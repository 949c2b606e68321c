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

* :class:`EngineLink`: every call MC makes to the engine, in one place.
* :class:`TaskLabeler`: the primitives (rollout, policy play, entropy, value, settle) of one task.
* :class:`TaskPlan`: one task's plan (its values, plays and pairs) and its rows.

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
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from hpl_data.conversation import episode_messages
from hpl_data.engine import Branch, ChatPlay
from hpl_data.rollout import Step, derive_seed
from hpl_data.segmenters import fixed_k, fixed_n, uncertainty
from hpl_data.workers import Op
from hpl_envs.agents import steps as agent_steps
from hpl_envs.react import format_observation, format_turn
from hpl_envs.registry import delta_bucket, length_bucket, profile

RETRIES_FOR_A_DIFFERENT_ACTION = 4


def buckets(env_name: str, length: int, delta: float) -> tuple[int, int]:
    """Length bucket 1..3 (by the env's thresholds) and ΔR bucket 1..3 (1 = largest gap)."""
    return length_bucket(env_name, length), delta_bucket(delta)


class Source(NamedTuple):
    """Where the rollouts of an estimated value start: a named snapshot in the task's worker, its
    observation and info, the seed key (rollout m gets ``(*key, m)``) and the conversation there."""

    state: str
    obs: str
    info: dict
    key: tuple
    history: list[dict] | None


@dataclass
class Value:
    mean: float
    std: float
    n: int  # rollouts behind the mean; 0 = exact (a finished episode's outcome)
    outcomes: list[float] = field(default_factory=list)
    source: Source | None = None  # where more rollouts come from (None: exact)

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
class Play(ChatPlay):
    """A policy's play as MC uses it: the engine's :class:`~hpl_data.engine.ChatPlay` (steps,
    observation and info reached, conversation, snapshot of an unfinished play) with its outcome
    (None: the episode goes on from ``state``) and why it stopped."""

    outcome: float | None = None

    @classmethod
    def of(cls, play: ChatPlay, outcome: float | None = None) -> Play:
        return cls(**{f.name: getattr(play, f.name) for f in fields(ChatPlay)}, outcome=outcome)

    @property
    def actions(self) -> list[str]:
        return [s.action for s in self.steps]

    @property
    def turns(self) -> list[str]:
        """The assistant message of each action."""
        return [s.raw_output for s in self.steps]

    @property
    def observations(self) -> list[str]:
        """The observation after each action."""
        return [s.observation for s in self.steps[1:]] + ([self.obs] if self.steps else [])


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


def _first_action_unlike(env, env_name: str, obs: str, info: dict, spec: str, seeds: list[int], avoid: str | None):
    """(agent, its first action): the first seed whose agent's first action differs from ``avoid``
    (the last seed's if none does)."""
    for seed in seeds:
        agent = _agent(env_name, spec, seed)
        agent.reset(env, obs, info)
        first = agent.act(obs, info)
        if avoid is None or first.strip() != avoid.strip():
            break
    return agent, first


def worker_policy_steps(env, env_name: str, saved: dict, state: str, obs: str, info: dict, n: int, spec: str,
                        seeds: list[int], avoid: str | None, save_as: str) -> Play | None:
    """An agent plays up to n actions from a named snapshot (the first differing from ``avoid``,
    trying ``seeds`` in turn); an unfinished play's snapshot is kept as ``save_as``."""
    env.set_state(saved[state])
    agent, first = _first_action_unlike(env, env_name, obs, info, spec, seeds, avoid)
    if avoid is not None and first.strip() == avoid.strip():
        return None
    steps: list[Step] = []
    outcome = None
    for rec in agent_steps(env, agent, obs, info, max_actions=n, first_action=first):
        steps.append(Step(obs, rec.action, rec.reward, bool(rec.info.get("action_valid", True)),
                          raw_output=format_turn(rec.action, None, env_name)))
        obs, info = rec.obs, rec.info
        if rec.done:
            outcome = rec.reward
    if outcome is None:
        saved[save_as] = env.get_state()
    return Play(steps, obs, info, [], state=None if outcome is not None else save_as, outcome=outcome)


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


# ----------------------------------------------------------------------------- the engine, in one place
class EngineLink:
    """Every call MC makes to :class:`hpl_data.engine.RolloutEngine`, so an engine API change is
    made here only. One task holds one link: a session pinned to one worker, where the task's
    named snapshots live and its rollouts run."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.handle = engine.session()

    @property
    def id(self) -> int:
        return self.handle.id

    async def run(self, fn: str, *args: Any):
        """``hpl_data.mc:<fn>(env, env_name, saved, *args)`` in the task's worker."""
        return await self.engine.call(self.handle, Op.RUN, f"hpl_data.mc:{fn}", *args)

    async def chat(self, messages: list[dict], params, affinity: str):
        return await self.engine.chat(messages, params, affinity=affinity)

    async def play_from(self, branch: Branch, params, affinity: str) -> Play:
        """The chat policy plays ``branch`` as a new episode of the task's worker; the outcome is
        the final reward of an ended play (None: it goes on from ``Play.state``)."""
        on_mark = branch.on_mark
        if on_mark is not None:
            branch = replace(branch, on_mark=lambda k, p: on_mark(k, Play.of(p)))
        h = self.engine.sibling(self.handle)
        try:
            play = await self.engine.play_from(h, branch, params=params, affinity=affinity)
        finally:
            self.engine.release(h)
        return Play.of(play, play.reward if play.stop_reason else None)

    async def close(self, prefix: str) -> None:
        """Forget the task's named snapshots (those under ``prefix``) and free its worker slot."""
        if self.handle.worker is not None:
            try:
                await self.engine.call(self.handle, Op.DROP, prefix)
            except Exception:  # noqa: BLE001 - a dead worker dropped them already
                pass
        self.engine.release(self.handle)


# ----------------------------------------------------------------------------- on the event loop
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

        self.link = EngineLink(engine)
        self.s, self.slots = settings, slots
        self.env_name = engine.env_name
        self.multiline = profile(self.env_name).multiline_actions
        self.counters = counters if counters is not None else Counter()
        self.live = live if live is not None else Counter()
        self.is_agent = parse_spec(settings.policy).is_agent
        # rollouts keep only the text of each turn: no log-probs asked for (less work for the server)
        self.params = SamplingParams(temperature=settings.temperature, max_tokens=settings.max_tokens, logprobs=False)
        self.prefix = f"t{self.link.id}:"
        self._names = iter(range(1 << 62))
        self.min_rollouts = max(1, min(settings.min_rollouts, settings.rollouts))
        # rollouts a value starts with: M (fixed), min_rollouts (adaptive), or 1 with curtailment, which
        # decides exactly as fixed M does and so needs no statistical minimum to start from
        self.first_rollouts = (1 if settings.curtail else self.min_rollouts) if settings.adaptive else settings.rollouts

    def _name(self) -> str:
        return f"{self.prefix}p{next(self._names)}"

    async def close(self) -> None:
        await self.link.close(self.prefix)

    async def expert_pass(self, expert: str, task_id: str) -> dict:
        return await self.link.run("worker_expert_pass", expert, task_id, self.s.seed, f"{self.prefix}e")

    # ---------------------------------------------------------------- chat policy plays
    async def _first_turn(self, messages: list[dict], key: tuple, avoid: str | None) -> tuple[int, Any] | None:
        """(seed, turn 0) of a chat play, drawn here to compare its action with ``avoid`` (other
        seeds tried); None if it never differs."""
        from hpl_envs.react import parse_react

        for tries in range(RETRIES_FOR_A_DIFFERENT_ACTION + 1):
            agent_seed = derive_seed(self.s.seed, *key, "retry", tries) if tries else derive_seed(self.s.seed, *key)
            # one task's rollouts go to one server (its prefix cache)
            comp = await self.link.chat(messages, self.params.replace(seed=derive_seed(agent_seed, 0)), self.prefix)
            action = parse_react(comp.text, multiline=self.multiline).action
            if avoid is None or action.strip() != avoid.strip():
                return agent_seed, comp
        return None

    async def _chat_play(self, state: str, obs: str, history: list[dict] | None, key: tuple, n: int | None,
                         avoid: str | None = None, marks: frozenset[int] = frozenset(),
                         on_mark: Callable[[int, Play], None] | None = None) -> Play | None:
        """The chat policy plays from a named snapshot: n actions (None: to the end), its first
        action differing from ``avoid`` (None if it never does); ``marks``/``on_mark`` as in
        :class:`Branch`. A context overflow ends a play with outcome 0, like a truncated episode."""
        from hpl_data.policies import ContextLengthError
        from hpl_envs.prompts import initial_messages

        base = list(history) if history else initial_messages(self.env_name, obs, self.s.prompts)
        try:
            drawn = await self._first_turn(base, key, avoid)
        except ContextLengthError:
            self.counters["rollouts_context_length"] += 1
            return None if n is not None else Play([], obs, {}, [], outcome=0.0)
        if drawn is None:
            return None
        seed, first = drawn
        play = await self.link.play_from(Branch(seed, state, obs, base, first, n, marks, on_mark, self.prefix),
                                         self.params, affinity=self.prefix)
        self.counters["env_steps"] += len(play.steps)
        if play.stop_reason == "context_length":
            self.counters["rollouts_context_length"] += 1
            play.outcome = 0.0
        return play

    # ---------------------------------------------------------------- the three primitives
    async def rollout(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None) -> float:
        return (await self.rollout_play(state, obs, info, key, history)).outcome

    async def rollout_play(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None,
                           marks: frozenset[int] = frozenset(),
                           on_mark: Callable[[int, Play], None] | None = None) -> Play:
        """One rollout to the end; a chat policy's play is returned whole (an agent's: the outcome
        only); ``marks``/``on_mark`` as in :class:`Branch`."""
        async with self.slots:
            self.counters["restores"] += 1
            self.counters["rollouts"] += 1
            self.live["rollouts_in_flight"] += 1
            try:
                if self.is_agent:
                    outcome, steps = await self.link.run("worker_rollout", state, obs, info, self.s.policy,
                                                         derive_seed(self.s.seed, *key))
                    self.counters["env_steps"] += steps
                    play = Play([], obs, info, [], outcome=outcome)
                else:
                    play = await self._chat_play(state, obs, history, key, None, marks=marks, on_mark=on_mark)
            finally:
                self.live["rollouts_in_flight"] -= 1
            self.live["rollouts_done"] += 1
            return play

    async def policy_steps(self, state: str, obs: str, info: dict, n: int, key: tuple, avoid: str | None = None,
                           history: list[dict] | None = None) -> Play | None:
        async with self.slots:
            self.counters["restores"] += 1
            if not self.is_agent:
                return await self._chat_play(state, obs, history, key, n, avoid)
            seeds = [derive_seed(self.s.seed, *key)]
            if avoid is not None:
                seeds += [derive_seed(self.s.seed, *key, "retry", i)
                          for i in range(1, RETRIES_FOR_A_DIFFERENT_ACTION + 1)]
            play = await self.link.run("worker_policy_steps", state, obs, info, n, self.s.policy, seeds, avoid,
                                       self._name())
            self.counters["env_steps"] += 0 if play is None else len(play.steps)
            return play

    async def entropy(self, state: str, obs: str, info: dict, samples: int, key: tuple,
                      history: list[dict] | None = None) -> float:
        seeds = [derive_seed(self.s.seed, *key, "entropy", i) for i in range(samples)]
        if self.is_agent:
            async with self.slots:
                return entropy_of(await self.link.run("worker_first_actions", state, obs, info, self.s.policy, seeds))
        from hpl_data.policies import ContextLengthError
        from hpl_envs.prompts import initial_messages
        from hpl_envs.react import parse_react

        messages = list(history) if history else initial_messages(self.env_name, obs, self.s.prompts)

        async def sample(seed: int) -> str:
            async with self.slots:
                try:
                    comp = await self.link.chat(messages, self.params.replace(seed=derive_seed(seed, 0)), self.prefix)
                except ContextLengthError:
                    return ""
                return parse_react(comp.text, multiline=self.multiline).action

        return entropy_of(list(await asyncio.gather(*(sample(s) for s in seeds))))

    # ---------------------------------------------------------------- values
    async def value(self, state: str, obs: str, info: dict, key: tuple, history: list[dict] | None = None) -> Value:
        """Mean outcome of policy rollouts from a snapshot: ``first_rollouts`` of them (M; in
        adaptive mode ``min_rollouts``, or one with curtailment), :meth:`extend` adds more."""
        v = Value(0.0, 0.0, 0, [], Source(state, obs, info, key, history))
        await self.extend(v, self.first_rollouts)
        return v

    async def value_with(self, rollout0: asyncio.Future, source: Source) -> Value:
        """A value whose rollout 0 is already under way (a shared play's episode): it and rollouts
        1.. of the first batch, gathered together."""
        state, obs, info, key, history = source
        plays = await asyncio.gather(rollout0, *(self.rollout(state, obs, info, (*key, m), history)
                                                 for m in range(1, self.first_rollouts)))
        v = Value(0.0, 0.0, 0, [], source)
        add(v, [plays[0].outcome, *plays[1:]])
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


# ----------------------------------------------------------------------------- one task's pairs
@dataclass
class Comparison:
    """A pair to be: the policy's play (None: it had no alternative or could not act) and its
    value, against the expert's value."""

    play: Play | None
    rejected: Value | None
    chosen: Value | None


@dataclass
class PairRows:
    """Rows of step_pairs and group_pairs (one task's, or a run's)."""

    step: list[dict]
    group: list[dict]


def pair_row(base: dict, env_name: str, *, level: str, start: int, length: int, prompt: list[dict],
             chosen: list[dict], rejected: list[dict], values: tuple[Value, Value], n_rollouts: int,
             segmenter: str) -> dict:
    """One row of step_pairs or group_pairs (schema :data:`hpl_data.parquet.MC_PAIRS`): the
    expert's turns over the policy's, from ``start`` for ``length`` actions, with both values."""
    v_chosen, v_rejected = values
    delta = v_chosen.mean - v_rejected.mean
    lb, db = buckets(env_name, length, delta)
    return {**base, "prompt": prompt, "chosen": chosen, "rejected": rejected, "level": level, "group_start": start,
            "group_length": length, "chosen_reward": v_chosen.mean, "rejected_reward": v_rejected.mean,
            "chosen_std": v_chosen.std, "rejected_std": v_rejected.std, "n_rollouts": n_rollouts, "delta_r": delta,
            "length_bucket": lb, "delta_bucket": db, "bucket": f"B{lb}{db}", "segmenter": segmenter,
            "chosen_outcomes": list(v_chosen.outcomes), "rejected_outcomes": list(v_rejected.outcomes)}


def play_messages(play: Play, env_name: str) -> list[dict]:
    """A play's turns as a conversation: assistant turns with the observations between them."""
    messages = []
    for i, turn in enumerate(play.turns):
        messages.append({"role": "assistant", "content": turn})
        if i + 1 < len(play.turns):
            messages.append({"role": "user", "content": format_observation(play.observations[i], env_name)})
    return messages


def _done(value: Value) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


class TaskPlan:
    """One task's plan, from its expert pass: the expert's values, the policy's plays and the
    pairs they make. Built on the engine's loop; :meth:`pairs` labels it.

    Every policy play and value is started at once (their rollouts share the run's budget); the
    pairs are then settled and written in a fixed order (step pairs by t, then groups). One
    rollout tree (chat policies, ``share_rollouts``): rollout 0 from expert state t starts with a
    policy action at t, so its first action is the step alternative at t (when it differs from the
    expert's) and its first n actions are the policy's play of a group starting at t; the rest of it
    is one rollout of that play's value. Same distributions, fewer LLM calls.
    """

    def __init__(self, lab: TaskLabeler, split: str, ex: dict, *, expert: str, levels: set[str],
                 groups: list[tuple[int, int]], segmenter: str) -> None:
        s = lab.s
        self.lab, self.ex, self.segmenter = lab, ex, segmenter
        self.length = len(ex["steps"])
        self.step_level = "step" in levels
        self.groups = list(groups) if "group" in levels else []
        self.messages = episode_messages(lab.env_name, ex, s.prompts)
        self.base_row = {"env": lab.env_name, "split": split, "task_id": ex["task_id"], "task_type": ex["task_type"],
                         "policy_id": s.policy, "expert_id": expert, "seed": s.seed, "n_rollouts": s.rollouts}
        self.share = s.share_rollouts and not lab.is_agent
        planned = ({t + 1 for t in range(self.length)} if self.step_level else set()) | {b for _, b in self.groups}
        planned.discard(self.length)
        self.planned = planned  # expert states whose values the pairs ask for
        self.marks_at = {t: frozenset(({1} if self.step_level else set()) | {b - a for a, b in self.groups if a == t})
                         for t in planned}  # plays rollout 0 from t gives: after k actions
        self.values: dict[int, asyncio.Future] = {self.length: _done(Value(ex["reward"], 0.0, 0))}
        self.rollout0: dict[int, asyncio.Future] = {}  # t -> rollout 0 from expert state t, whole
        self.marked: dict[int, dict[int, asyncio.Future]] = {}  # t -> k -> rollout 0 after k actions (or None)
        self.estimated: list[Value] = []  # every estimated value (adaptive: rollouts saved)
        self.requested: set[int] = set()

    def source(self, t: int) -> Source:
        """Expert state t as the start of rollouts."""
        ex = self.ex
        return Source(ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t], (ex["task_id"], "exp", t),
                      self.messages[: 1 + 2 * t])

    # ---------------------------------------------------------------- values and plays
    def expert_value(self, t: int, count: bool = True) -> asyncio.Future:
        """The value of expert state t, started once (with rollout 0 as the shared plays' source)."""
        if count:
            self.lab.counters["values_reused"] += t in self.requested
            self.requested.add(t)
        if t not in self.values:
            if self.share and t in self.planned:
                self._start_rollout0(t)
                self.values[t] = asyncio.ensure_future(self.lab.value_with(self.rollout0[t], self.source(t)))
            else:
                self.values[t] = asyncio.ensure_future(self.lab.value(*self.source(t)))
            self.values[t].add_done_callback(
                lambda f: self.estimated.append(f.result()) if not f.cancelled() and f.exception() is None else None)
        return self.values[t]

    def _start_rollout0(self, t: int) -> None:
        state, obs, info, key, history = self.source(t)
        futs = self.marked[t] = {k: asyncio.get_running_loop().create_future() for k in self.marks_at[t]}

        def on_mark(k: int, play: Play) -> None:
            if not futs[k].done():
                futs[k].set_result(play)

        def ended(_: asyncio.Future) -> None:  # marks not reached (episode over, or failed): None
            for f in futs.values():
                if not f.done():
                    f.set_result(None)

        self.rollout0[t] = asyncio.ensure_future(
            self.lab.rollout_play(state, obs, info, (*key, 0), history, self.marks_at[t], on_mark))
        self.rollout0[t].add_done_callback(ended)

    async def _shared_play(self, start: int, n: int, key: tuple, avoid: str | None) -> tuple[Play, Value] | None:
        """The first n actions of rollout 0 from expert state ``start`` as a policy play, and its
        value (that rollout's outcome plus fresh rollouts from the play's end, started as soon as
        rollout 0 gets there); None if it cannot serve."""
        if n not in self.marked.get(start, {}):
            return None
        play = await self.marked[start][n]
        counters = self.lab.counters
        if play is None:  # rollout 0 ended (or failed) within n actions: the whole of it is the play
            whole = await self.rollout0[start]
            if not whole.actions or len(whole.actions) > n or _same(whole.actions[0], avoid):
                return None
            counters["plays_shared"] += 1
            return whole, Value(whole.outcome, 0.0, 0)
        if _same(play.actions[0], avoid):
            return None
        counters["plays_shared"] += 1
        counters["rollouts_shared"] += 1
        v = await self.lab.value_with(self.rollout0[start], Source(play.state, play.obs, play.info, (*key, "v"),
                                                                   play.messages))
        self.estimated.append(v)
        return play, v

    async def _play_and_value(self, start: int, n: int, key: tuple, avoid: str | None) -> tuple[Play | None,
                                                                                               Value | None]:
        shared = await self._shared_play(start, n, key, avoid) if self.share else None
        if shared is not None:
            return shared
        state, obs, info, _, history = self.source(start)
        play = await self.lab.policy_steps(state, obs, info, n, key, avoid=avoid, history=history)
        if play is None:
            return None, None
        if play.outcome is not None:
            return play, Value(play.outcome, 0.0, 0)
        v = await self.lab.value(play.state, play.obs, play.info, (*key, "v"), play.messages)
        self.estimated.append(v)
        return play, v

    async def _step_pair(self, t: int) -> Comparison:
        play, v = await self._play_and_value(t, 1, (self.ex["task_id"], "alt", t), self.ex["steps"][t]["action"])
        return Comparison(play, v, await self.expert_value(t + 1) if play is not None else None)

    async def _group_pair(self, start: int, end: int) -> Comparison:
        v_expert = self.expert_value(end)
        play, v = await self._play_and_value(start, end - start, (self.ex["task_id"], "grp", start, end), None)
        return Comparison(play, v, await v_expert)

    async def _compare(self) -> tuple[list[Comparison], list[Comparison]]:
        """Every comparison of the task, started together; results in the fixed order."""
        if self.share:  # the expert values the pairs will ask for, started first: their rollouts 0 feed the plays
            for t in sorted(self.planned):
                self.expert_value(t, count=False)
        step_jobs = [asyncio.ensure_future(self._step_pair(t)) for t in range(self.length)] if self.step_level else []
        group_jobs = [asyncio.ensure_future(self._group_pair(a, b)) for a, b in self.groups]
        jobs = [*step_jobs, *group_jobs]
        try:
            return [await j for j in step_jobs], [await j for j in group_jobs]
        finally:
            everything = [*jobs, *self.values.values(), *self.rollout0.values()]
            for j in everything:
                j.cancel()
            await asyncio.gather(*everything, return_exceptions=True)

    # ---------------------------------------------------------------- rows
    async def pairs(self) -> PairRows:
        """Label the task: its step and group pair rows (pairs with ΔR > 0)."""
        lab = self.lab
        steps, groups = await self._compare()
        if lab.s.adaptive:  # settle every valued pair (shared values in the fixed order), then write rows
            await settle_all(lab, [(c.chosen, c.rejected) for c in [*steps, *groups] if c.play is not None])
        step_rows = [self._step_row(t, c) for t, c in enumerate(steps) if self._kept(c, "step_no_alternative")]
        group_rows = [self._group_row(a, b, c) for (a, b), c in zip(self.groups, groups)
                      if self._kept(c, "group_no_policy_play")]
        if lab.s.adaptive:  # rollouts a fixed-M run would have drawn for the same values
            lab.counters["rollouts_saved"] += sum(lab.s.rollouts - v.n for v in self.estimated)
        return PairRows(step_rows, group_rows)

    def _kept(self, c: Comparison, missing: str) -> bool:
        """Counts the comparison; True if it is a pair (the expert's value is higher)."""
        if c.play is None:  # no alternative action, or the policy could not act (its context overflowed)
            self.lab.counters[missing] += 1
            return False
        self.lab.counters["pairs_labelled"] += 1  # valued comparisons, kept or not (ΔR > 0 keeps them)
        return c.chosen.mean - c.rejected.mean > 0

    def _n_rollouts(self, c: Comparison) -> int:
        return max(c.chosen.n, c.rejected.n) if self.lab.s.adaptive else self.lab.s.rollouts

    def _step_row(self, t: int, c: Comparison) -> dict:
        m = self.messages
        return pair_row(self.base_row, self.lab.env_name, level="step", start=t, length=1, prompt=m[: 1 + 2 * t],
                        chosen=[m[1 + 2 * t]], rejected=[{"role": "assistant", "content": c.play.turns[0]}],
                        values=(c.chosen, c.rejected), n_rollouts=self._n_rollouts(c), segmenter="")

    def _group_row(self, start: int, end: int, c: Comparison) -> dict:
        m = self.messages
        return pair_row(self.base_row, self.lab.env_name, level="group", start=start, length=end - start,
                        prompt=m[: 1 + 2 * start], chosen=m[1 + 2 * start: 2 * end],
                        rejected=play_messages(c.play, self.lab.env_name), values=(c.chosen, c.rejected),
                        n_rollouts=self._n_rollouts(c), segmenter=self.segmenter)


def _same(action: str, avoid: str | None) -> bool:
    return avoid is not None and action.strip() == avoid.strip()
