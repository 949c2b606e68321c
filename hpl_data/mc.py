"""Step- and group-level preference pairs labelled by Monte-Carlo rollouts from env snapshots.

For each task: the expert plays once while its env state is saved before every action
(``get_state``). Values are means of M reference-policy rollouts to the end of the episode:

* V_expert(t): the state after the expert's first t actions (t = T is the expert's outcome).
* step pairs (IPR): at each expert step t the policy proposes another action a'; its value is the
  mean outcome of M rollouts after a'. Pair kept when V_expert(t+1) > V(a').
* group pairs (HPL, Eq. 2): the expert trajectory is segmented; for group [s, e) the policy plays
  e-s actions from the same state; r(G) = mean outcome of M rollouts from the state after G.
  Pair kept when ΔR = r(expert group) - r(policy group) > 0.

Rollouts are reused across levels: V_expert(e) computed for a step label is the value of the
expert group that ends at e. Rollouts restore snapshots, never replay prefixes from reset.

Adaptive mode (``adaptive=True``): each side of a pair starts with ``min_rollouts`` and gets one
more rollout at a time (up to M, the side with fewer first) until a Hoeffding bound on ΔR settles
its sign: |ΔR^| > R sqrt(ln(2/δ)/2 (1/n_c + 1/n_r)), R the outcome range, a side whose outcome is
exact (a finished episode) counting as 1/n = 0. Rollout m always uses the same seed, so an
adaptive label is the non-adaptive label computed from fewer of the same rollouts.
"""

from __future__ import annotations

import math
import statistics
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hpl_data.conversation import episode_messages
from hpl_data.segmenters import fixed_k, fixed_n, uncertainty
from hpl_envs.react import format_observation, format_turn

# (length thresholds, ΔR thresholds) of the paper's 3x3 curriculum buckets
LENGTH_THRESHOLDS = {"alfworld": (0, 3, 6), "webshop": (0, 2, 4), "intercode-sql": (0, 2, 4)}
DELTA_THRESHOLDS = (1.0, 0.7, 0.4)


def buckets(env_name: str, length: int, delta: float) -> tuple[int, int]:
    """Length bucket 1..3 (by the env's thresholds) and ΔR bucket 1..3 (1 = largest gap)."""
    lt = LENGTH_THRESHOLDS.get(env_name, (0, 2, 4))
    lb = 1 if length <= lt[1] else 2 if length <= lt[2] else 3
    db = 1 if delta >= DELTA_THRESHOLDS[1] else 2 if delta >= DELTA_THRESHOLDS[2] else 3
    return lb, db


def _seed(*parts: Any) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) & 0x7FFFFFFF


@dataclass
class Value:
    mean: float
    std: float
    n: int  # rollouts behind the mean; 0 = exact (a finished episode's outcome)
    outcomes: list[float] = field(default_factory=list)
    source: tuple | None = None  # (state, obs, info, key): where more rollouts come from

    @property
    def exact(self) -> bool:
        return self.source is None


@dataclass
class PolicyPlay:
    actions: list[str]
    observations: list[str]  # after each action
    turns: list[str]  # assistant contents
    outcome: float | None  # the episode's reward if it ended
    obs: str
    info: dict
    history: list[dict] | None  # the LLM policy's conversation up to ``obs``


@dataclass
class TaskLabeler:
    env: Any
    env_name: str
    policy: str
    rollouts: int
    seed: int
    counters: Counter = field(default_factory=Counter)
    adaptive: bool = False
    min_rollouts: int = 2
    confidence: float = 0.8  # 1 - δ of the Hoeffding bound
    outcome_range: float = 1.0  # max - min outcome (InterCode with Kendall tau: 2)
    policy_options: dict = field(default_factory=dict)  # LLM policies: temperature, max_tokens, prompts

    def _agent(self, *key, history: list[dict] | None = None):
        from hpl_data.llm_agent import make_rollout_agent

        agent = make_rollout_agent(self.env_name, self.policy, seed=_seed(self.seed, *key), **self.policy_options)
        if history is not None and hasattr(agent, "set_history"):
            agent.set_history(history)  # an LLM policy sees the conversation that led to this state
        return agent

    def _finish(self, obs: str, info: dict, key: tuple, history: list[dict] | None = None) -> float:
        """Policy plays from the env's current state to the end; returns the outcome."""
        from hpl_data.policies import ContextLengthError

        agent = self._agent(*key, history=history)
        agent.reset(self.env, obs, info)
        while True:
            try:
                action = agent.act(obs, info)
            except ContextLengthError:  # the conversation outgrew the model: the episode ends unfinished
                self.counters["rollouts_context_length"] += 1
                return 0.0
            obs, reward, term, trunc, info = self.env.step(action)
            self.counters["env_steps"] += 1
            if term or trunc:
                return float(reward)

    def value(self, state, obs: str, info: dict, key: tuple, history: list[dict] | None = None) -> Value:
        """Mean outcome of policy rollouts from ``state``: M of them, or ``min_rollouts`` to start
        with in adaptive mode (:meth:`extend` adds more)."""
        v = Value(0.0, 0.0, 0, [], (state, obs, info, key, history))
        self.extend(v, self.min_rollouts if self.adaptive else self.rollouts)
        return v

    def extend(self, v: Value, n: int) -> None:
        """Grow ``v`` to ``n`` rollouts (rollout m always has the same seed)."""
        if v.exact:
            return
        state, obs, info, key, history = v.source
        while v.n < min(n, self.rollouts):
            self.env.set_state(state)
            self.counters["restores"] += 1
            v.outcomes.append(self._finish(obs, info, (*key, v.n), history))
            v.n += 1
            self.counters["rollouts"] += 1
        v.mean = sum(v.outcomes) / v.n
        v.std = statistics.pstdev(v.outcomes) if v.n > 1 else 0.0

    def settle(self, chosen: Value, rejected: Value) -> None:
        """Adaptive mode: add rollouts until the sign of ΔR is settled or both sides have M."""
        if not self.adaptive:
            return
        log_term = math.log(2 / (1 - self.confidence)) / 2
        while True:
            inv = sum(1 / v.n for v in (chosen, rejected) if not v.exact)
            half = self.outcome_range * math.sqrt(log_term * inv)
            if abs(chosen.mean - rejected.mean) > half:
                self.counters["pairs_settled_early"] += any(not v.exact and v.n < self.rollouts
                                                            for v in (chosen, rejected))
                return
            open_sides = [v for v in (chosen, rejected) if not v.exact and v.n < self.rollouts]
            if not open_sides:
                return
            side = min(open_sides, key=lambda v: v.n)
            self.extend(side, side.n + 1)

    def policy_steps(self, state, obs: str, info: dict, n: int, key: tuple, avoid: str | None = None,
                     history: list[dict] | None = None):
        """The policy plays up to n actions from ``state``: (actions, observations after each,
        terminal outcome or None, obs, info, history after). With ``avoid``, the first action must
        differ from it."""
        from hpl_data.policies import ContextLengthError

        self.env.set_state(state)
        self.counters["restores"] += 1
        try:
            agent = self._agent(*key, history=history)
            agent.reset(self.env, obs, info)
            first = agent.act(obs, info)
            tries = 0
            while avoid is not None and first.strip() == avoid.strip() and tries < 4:
                tries += 1
                agent = self._agent(*key, "retry", tries, history=history)
                agent.reset(self.env, obs, info)
                first = agent.act(obs, info)
        except ContextLengthError:
            self.counters["rollouts_context_length"] += 1
            return None
        if avoid is not None and first.strip() == avoid.strip():
            return None
        from hpl_data.llm_agent import history_after

        actions, observations, turns = [], [], []
        action = first
        for i in range(n):
            if i:
                try:
                    action = agent.act(obs, info)
                except ContextLengthError:  # ends unfinished: outcome 0, like a truncated episode
                    self.counters["rollouts_context_length"] += 1
                    return PolicyPlay(actions, observations, turns, 0.0, obs, info, None)
            # what the policy said: an LLM's own text, else the action in the ReAct layout
            turns.append(getattr(agent, "last_output", None) or format_turn(action, None, self.env_name))
            obs, reward, term, trunc, info = self.env.step(action)
            self.counters["env_steps"] += 1
            actions.append(action)
            observations.append(obs)
            if term or trunc:
                return PolicyPlay(actions, observations, turns, float(reward), obs, info, None)
        return PolicyPlay(actions, observations, turns, None, obs, info, history_after(agent, obs, self.env_name))


def expert_pass(env, env_name: str, expert: str, task_id: str, seed: int) -> dict:
    """Expert episode with a snapshot before every action."""
    from hpl_data.policies import make_agent_from_spec

    agent = make_agent_from_spec(env_name, expert, seed=_seed(seed, task_id, "expert"))
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    steps, states, infos = [], [], []
    reward, done = 0.0, False
    while not done:
        states.append(env.get_state())
        infos.append(info)
        action = agent.act(obs, info)
        steps.append({"observation": obs, "action": action, "thought": getattr(agent, "last_thought", "") or ""})
        obs, reward, term, trunc, info = env.step(action)
        done = term or trunc
    return {"task_id": task_id, "task_type": infos[0].get("task_type", ""), "steps": steps, "states": states,
            "infos": infos, "reward": float(reward), "final_observation": obs}


def empirical_entropy(env, env_name: str, policy: str, state, obs: str, info: dict, samples: int,
                      seed: int, key: tuple, history: list[dict] | None = None) -> float:
    """Entropy (nats) of the policy's action distribution at a state, estimated by sampling."""
    from hpl_data.llm_agent import make_rollout_agent

    counts: Counter = Counter()
    for i in range(samples):
        env.set_state(state)
        agent = make_rollout_agent(env_name, policy, seed=_seed(seed, *key, "entropy", i))
        if history is not None and hasattr(agent, "set_history"):
            agent.set_history(history)
        agent.reset(env, obs, info)
        counts[agent.act(obs, info).strip()] += 1
    return -sum(c / samples * math.log(c / samples) for c in counts.values())


def segment(kind: str, arg: float | None, length: int, entropies: list[float] | None,
            threshold: float | None) -> list[tuple[int, int]]:
    if kind == "fixed-n":
        return fixed_n(length, int(arg))
    if kind == "fixed-k":
        return fixed_k(length, int(arg))
    if kind == "uncertainty":
        return uncertainty(entropies or [0.0] * length, threshold if threshold is not None else float("inf"))
    raise ValueError(f"segmenter {kind!r} is not supported by this builder")


def label_task(env, env_name: str, split: str, ex: dict, *, policy: str, expert: str, rollouts: int, seed: int,
               levels: set[str], groups: list[tuple[int, int]], segmenter: str, prompts: str,
               counters: Counter, adaptive: bool = False, min_rollouts: int = 2,
               confidence: float = 0.8, policy_options: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Step and group pairs for one task, from its expert pass."""
    outcome_range = 2.0 if env_name == "intercode-sql" and getattr(env, "kendall_tau", True) else 1.0
    lab = TaskLabeler(env, env_name, policy, rollouts, seed, counters, adaptive=adaptive,
                      min_rollouts=max(1, min(min_rollouts, rollouts)), confidence=confidence,
                      outcome_range=outcome_range, policy_options=dict(policy_options or {}))
    T = len(ex["steps"])
    messages = episode_messages(env_name, ex, prompts)
    tid = ex["task_id"]
    values: dict[int, Value] = {T: Value(ex["reward"], 0.0, 0)}
    estimated: list[Value] = []

    def v_expert(t: int) -> Value:
        if t not in values:
            values[t] = lab.value(ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t], (tid, "exp", t),
                                  messages[: 1 + 2 * t])
            estimated.append(values[t])
        else:
            counters["values_reused"] += 1
        return values[t]

    base = {"env": env_name, "split": split, "task_id": tid, "task_type": ex["task_type"], "policy_id": policy,
            "expert_id": expert, "seed": seed, "n_rollouts": rollouts}
    step_rows, group_rows = [], []
    if "step" in levels:
        for t in range(T):
            st, obs, info = ex["states"][t], ex["steps"][t]["observation"], ex["infos"][t]
            alt = lab.policy_steps(st, obs, info, 1, (tid, "alt", t), avoid=ex["steps"][t]["action"],
                                   history=messages[: 1 + 2 * t])
            if alt is None:
                counters["step_no_alternative"] += 1
                continue
            if alt.outcome is not None:
                v_alt = Value(alt.outcome, 0.0, 0)
            else:
                v_alt = lab.value(lab.env.get_state(), alt.obs, alt.info, (tid, "alt", t, "v"), alt.history)
                estimated.append(v_alt)
            v_exp = v_expert(t + 1)
            lab.settle(v_exp, v_alt)
            delta = v_exp.mean - v_alt.mean
            if delta <= 0:
                continue
            lb, db = buckets(env_name, 1, delta)
            step_rows.append({**base, "prompt": messages[: 1 + 2 * t], "chosen": [messages[1 + 2 * t]],
                              "rejected": [{"role": "assistant", "content": alt.turns[0]}],
                              "level": "step", "group_start": t, "group_length": 1, "chosen_reward": v_exp.mean,
                              "rejected_reward": v_alt.mean, "chosen_std": v_exp.std, "rejected_std": v_alt.std,
                              "n_rollouts": max(v_exp.n, v_alt.n) if adaptive else rollouts,
                              "delta_r": delta, "length_bucket": lb, "delta_bucket": db, "bucket": f"B{lb}{db}",
                              "segmenter": "", "chosen_outcomes": list(v_exp.outcomes),
                              "rejected_outcomes": list(v_alt.outcomes)})
    if "group" in levels:
        for s, e in groups:
            st, obs, info = ex["states"][s], ex["steps"][s]["observation"], ex["infos"][s]
            v_exp = v_expert(e)
            pol = lab.policy_steps(st, obs, info, e - s, (tid, "grp", s, e), history=messages[: 1 + 2 * s])
            if pol is None:  # the policy could not act here (its context overflowed)
                counters["group_no_policy_play"] += 1
                continue
            if pol.outcome is not None:
                v_pol = Value(pol.outcome, 0.0, 0)
            else:
                v_pol = lab.value(lab.env.get_state(), pol.obs, pol.info, (tid, "grp", s, e, "v"), pol.history)
                estimated.append(v_pol)
            lab.settle(v_exp, v_pol)
            delta = v_exp.mean - v_pol.mean
            if delta <= 0:
                continue
            rejected = []
            for i, turn in enumerate(pol.turns):
                rejected.append({"role": "assistant", "content": turn})
                if i + 1 < len(pol.turns):
                    rejected.append({"role": "user", "content": format_observation(pol.observations[i], env_name)})
            lb, db = buckets(env_name, e - s, delta)
            group_rows.append({**base, "prompt": messages[: 1 + 2 * s], "chosen": messages[1 + 2 * s: 2 * e],
                               "rejected": rejected, "level": "group", "group_start": s, "group_length": e - s,
                               "chosen_reward": v_exp.mean, "rejected_reward": v_pol.mean, "chosen_std": v_exp.std,
                               "n_rollouts": max(v_exp.n, v_pol.n) if adaptive else rollouts,
                               "rejected_std": v_pol.std, "delta_r": delta, "length_bucket": lb, "delta_bucket": db,
                               "bucket": f"B{lb}{db}", "segmenter": segmenter,
                               "chosen_outcomes": list(v_exp.outcomes), "rejected_outcomes": list(v_pol.outcomes)})
    if adaptive:  # rollouts a fixed-M run would have drawn for the same values
        counters["rollouts_saved"] += sum(rollouts - v.n for v in estimated)
    return step_rows, group_rows
