"""The async rollout engine with agents (no LLM): parity with a plain loop, worker deaths,
user agents by spec, policy-spec parsing."""

import asyncio
import os
import signal

import pytest

from hpl_data.engine import EngineConfig, RolloutEngine, run_rollouts
from hpl_data.policies import parse_spec, topk_entropy
from hpl_data.rollout import episode_seed, run_episode
from hpl_envs import make_env
from hpl_envs.agents import make_agent


def test_parse_spec():
    assert parse_spec("heuristic").is_agent
    s = parse_spec("openai:http://127.0.0.1:8000/v1#qwen")
    assert (s.kind, s.target, s.model) == ("openai", "http://127.0.0.1:8000/v1", "qwen")
    assert parse_spec("vllm:/models/Qwen2.5-7B").target == "/models/Qwen2.5-7B"
    assert parse_spec("hf:Qwen/Qwen2.5-0.5B").kind == "hf"
    assert parse_spec("my_pkg.agents:make").is_agent
    for bad in ("", "genius", "vllm:", "foo:bar:baz", "openai"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_topk_entropy():
    import math

    assert topk_entropy([math.log(0.5), math.log(0.5)]) == pytest.approx(math.log(2))
    # 4 of 8 equiprobable outcomes seen: the unseen half counts as one outcome -> lower bound
    h = topk_entropy([math.log(1 / 8)] * 4)
    assert h == pytest.approx(4 * (1 / 8) * math.log(8) + 0.5 * math.log(2)) and h < math.log(8)


def _sequential(env_name, ids, agent):
    env = make_env(env_name)
    out = {}
    for tid in ids:
        s = episode_seed(0, tid)
        ep = run_episode(env, make_agent(env_name, agent, seed=s), env_name, tid, s)
        out[tid] = (ep.reward, [st.action for st in ep.steps])
    return out


@pytest.mark.parametrize("env_name,split", [("webshop", "test"), ("intercode-sql", "test")])
def test_engine_matches_sequential_loop(env_name, split):
    ids = make_env(env_name).task_ids(split)[:40]
    eps, counters = run_rollouts(env_name, ids, "heuristic", config=EngineConfig(workers=2, concurrency=16))
    assert [e["task_id"] for e in eps] == ids and not any(e["error"] for e in eps)
    assert {e["task_id"]: (e["reward"], [s["action"] for s in e["steps"]]) for e in eps} == _sequential(
        env_name, ids, "heuristic")
    assert counters["env_steps"] == sum(len(e["steps"]) for e in eps) and counters["resets"] == 40


def test_worker_sigkill_mid_run_loses_nothing():
    """SIGKILL an env worker while episodes are in flight: it is restarted, its agent episodes
    start over with the same seed, and the results equal an uninterrupted run."""
    ids = make_env("webshop").task_ids("test")[:80]
    killed = []

    async def main():
        cfg = EngineConfig(workers=2, concurrency=32)
        async with RolloutEngine("webshop", "heuristic", config=cfg) as eng:
            def on_episode(_):
                if len(killed) < 2 and eng.counters.episodes in (10, 40):
                    pid = eng.pool.workers[len(killed)].pid
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            eps = await eng.run(ids, on_episode)
            return eps, eng.counters.as_dict(), eng.pool.pids()

    eps, counters, pids = asyncio.run(main())
    assert len(killed) == 2 and not set(killed) & set(pids)
    assert counters["worker_restarts"] == 2 and counters["episode_restarts"] >= 1
    assert not any(e["error"] for e in eps)
    assert {e["task_id"]: (e["reward"], [s["action"] for s in e["steps"]]) for e in eps} == _sequential(
        "webshop", ids, "heuristic")


def test_user_agent_by_spec_and_bad_specs():
    ids = make_env("alfworld").task_ids("valid_unseen")[:2]
    eps, _ = run_rollouts("alfworld", ids, "example_agents:make", env_kwargs={"max_turns": 5},
                          config=EngineConfig(workers=1, concurrency=2))
    assert all(e["agent"] == "example_agents:make" and len(e["steps"]) == 5 and not e["error"] for e in eps)
    eps, counters = run_rollouts("webshop", ["0"], "example_agents:not_an_agent", config=EngineConfig(workers=1))
    assert "has no reset" in eps[0]["error"] and counters["failed_episodes"] == 1
    eps, _ = run_rollouts("webshop", ["no-such-task"], "heuristic", config=EngineConfig(workers=1))
    assert "no-such-task" in eps[0]["error"]


def test_release_agent_records_equal_the_local_runner():
    """hpl-gen collects agent episodes through the engine (EngineConfig.release_agent_records): each
    record equals rollout.run_episode's, field for field (the agent's own name, no stop reason), but
    the wall time; without the option the engine records the spec and why the episode stopped."""
    from hpl_data.policies import make_agent_from_spec

    ids = make_env("alfworld").task_ids("valid_unseen")[:2]
    kwargs = {"max_turns": 5}
    eps, _ = run_rollouts("alfworld", ids, "example_agents:make", env_kwargs=kwargs,
                          config=EngineConfig(workers=1, concurrency=2, release_agent_records=True))
    env = make_env("alfworld", **kwargs)
    for tid, ep in zip(ids, eps):
        s = episode_seed(0, tid)
        ref = run_episode(env, make_agent_from_spec("alfworld", "example_agents:make", seed=s), "alfworld", tid, s)
        assert {**ep, "seconds": 0} == {**ref.to_dict(), "seconds": 0}
        assert ep["agent"] == "first-admissible" and ep["stop_reason"] == "" and ep["truncated"]
    eps, _ = run_rollouts("alfworld", ids[:1], "example_agents:make", env_kwargs=kwargs,
                          config=EngineConfig(workers=1))
    assert eps[0]["agent"] == "example_agents:make" and eps[0]["stop_reason"] == "max_turns"


def test_episode_timeout_and_hung_worker_are_recorded():
    """A too-slow episode fails with 'episode timeout'; a worker stuck past env_timeout_s is killed,
    restarted, and the episode gives up after max_restarts; both are recorded, the run ends."""
    eps, c = run_rollouts("webshop", ["0"], "example_agents:slow", config=EngineConfig(workers=1, episode_timeout_s=1.5))
    assert eps[0]["error"].startswith("episode timeout") and eps[0]["stop_reason"] == "timeout"
    cfg = EngineConfig(workers=2, concurrency=2, env_timeout_s=1.0, max_restarts=1)
    eps, c = run_rollouts("webshop", ["0"], "example_agents:slow", config=cfg)
    assert "gave up after 1 restarts" in eps[0]["error"] and "hung" in eps[0]["error"]
    assert c["worker_restarts"] == 2 and c["failed_episodes"] == 1


def test_worker_core_answers_typed_messages():
    """The worker protocol in-process: each op answers its typed result; an unknown episode slot
    is 'lost', an unknown op an error; requests and answers survive the pipe's pickling."""
    import pickle

    from hpl_data.workers import EnvWorkerCore, Failed, Op, Request, ResetResult, Status, StepResult

    core = EnvWorkerCore("webshop", {})
    try:
        task = core.env.task_ids("test")[0]
        reset, step, lost, bad = core.run_batch([
            Request(Op.RESET, 1, (task, 7, None, True)), Request(Op.STEP, 1, ("search[shoes]", True)),
            Request(Op.STEP, 2, ("search[shoes]", False)), Request("teleport", 1)])
        assert isinstance(reset, ResetResult) and reset.state is not None
        assert type(step) is StepResult and not step.done and step.state is not None
        assert step.obs != reset.obs and "state" not in step.info
        assert lost == Failed(Status.LOST, lost.message) and "episode slot 2" in lost.message
        assert bad.status == Status.ERR and "unknown op 'teleport'" in bad.message
        assert pickle.loads(pickle.dumps([step, lost, Request(Op.SAVE, 1, ("x",))])) == [step, lost,
                                                                                          Request(Op.SAVE, 1, ("x",))]
    finally:
        core.close()


class _ScriptedChat:
    """A chat policy that answers turn t with ``actions[t]`` (the oracle's actions on one task), so
    a play's course is known in advance."""

    name = "scripted"

    def __init__(self, actions: list[str]) -> None:
        self.actions = actions

    async def chat(self, messages, params, affinity=None):
        from hpl_data.policies import Completion

        turn = sum(m["role"] == "assistant" for m in messages)
        return [Completion(f"Thought: step {turn}\nAction: {self.actions[turn]}", prompt_tokens=10,
                           completion_tokens=3)]

    async def close(self) -> None:
        pass


def test_play_and_play_from_a_branch_agree():
    """A chat play from reset, and the same play cut in two at a named snapshot (``play_from`` for
    n=2 actions with a mark at 1, then on from the kept snapshot), reach the same end."""
    from hpl_data.engine import Branch
    from hpl_data.policies import SamplingParams
    from hpl_data.rollout import Episode
    from hpl_data.workers import Op
    from hpl_envs.prompts import initial_messages

    task = make_env("webshop").task_ids("test")[0]
    oracle = _sequential("webshop", [task], "oracle")[task]
    actions, params = oracle[1], SamplingParams(temperature=0.0)
    assert len(actions) >= 3

    async def main():
        async with RolloutEngine("webshop", _ScriptedChat(actions), config=EngineConfig(workers=1)) as eng:
            ep = Episode(env="webshop", task_id=task, task_type="", instruction="", agent="scripted", seed=5)
            whole = await eng.play(eng.session(), ep, params=params)
            session = eng.session()
            reset = await eng.call(session, Op.RESET, task, 5, None, False)
            await eng.call(session, Op.SAVE, "root")
            marked = []
            branch = Branch(seed=5, state="root", obs=reset.obs, history=initial_messages("webshop", reset.obs), n=2,
                            marks=frozenset({1}), on_mark=lambda k, p: marked.append((k, p)), save_prefix="t:")
            head = await eng.play_from(eng.sibling(session), branch, params=params)
            tail = await eng.play_from(eng.sibling(session), Branch(seed=5, state=head.state, obs=head.obs,
                                                                    history=head.messages), params=params)
            return ep, whole, marked, head, tail

    ep, whole, marked, head, tail = asyncio.run(main())
    assert [s.action for s in ep.steps] == actions and ep.reward == whole.reward == oracle[0]
    assert whole.stop_reason == ep.stop_reason == "done" and whole.llm_calls == ep.llm_calls == len(actions)
    assert [(k, len(p.steps), p.state) for k, p in marked] == [(1, 1, marked[0][1].state)]
    assert marked[0][1].state.startswith("t:play") and head.state.endswith("@2")
    assert len(head.steps) == 2 and head.stop_reason == "" and head.prompt_tokens == 20
    assert [s.action for s in head.steps + tail.steps] == actions
    assert (tail.reward, tail.stop_reason, tail.terminated) == (whole.reward, "done", True)
