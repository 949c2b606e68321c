"""Several OpenAI-compatible endpoints behind one ``openai:`` spec: balancing by requests
outstanding, failover, ejection after consecutive errors, a probe that brings an endpoint back,
prefix-cache affinity. Against real HTTP servers on 127.0.0.1 (answering, failing with 500,
dropping connections, or not listening at all); the last test runs ``hpl-eval`` and ``hpl-gen``
against two real vLLM servers and kills one mid-run."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("openai")

from llm_helpers import ScriptedServer  # noqa: E402

from hpl_data.policies import PolicyError, SamplingParams, check_model_available, parse_spec  # noqa: E402
from hpl_data.policies.openai_backend import OpenAIOptions, OpenAIPolicy  # noqa: E402

ANSWER = json.dumps({
    "id": "c", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Thought: look\nAction: search[shoes]"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()


class Server(ScriptedServer):
    """A chat endpoint whose behaviour the test sets: ``ok`` (answers after ``delay_s``),
    ``error500`` or ``drop`` (closes the connection without an answer)."""

    def __init__(self) -> None:
        self.mode, self.delay_s, self.requests = "ok", 0.0, 0
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, request) -> None:
        with self.lock:
            self.requests += 1
            mode, delay = self.mode, self.delay_s
        if mode == "drop":
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        time.sleep(delay)
        self.reply(request, *((500, b'{"error": {"message": "injected"}}') if mode == "error500" else (200, ANSWER)))

    def reset(self, mode: str = "ok", delay_s: float = 0.0) -> None:
        self.mode, self.delay_s, self.requests = mode, delay_s, 0


@pytest.fixture(scope="module")
def servers():
    pair = (Server(), Server())
    yield pair
    for s in pair:
        s.close()


@pytest.fixture
def a_b(servers):
    for s in servers:
        s.reset()
    return servers


def policy(*urls: str, **kw) -> OpenAIPolicy:
    return OpenAIPolicy(list(urls), model="m", options=OpenAIOptions(backoff_s=0.01, backoff_max_s=0.02, **kw))


def run_calls(p: OpenAIPolicy, n: int, affinity=None, *, concurrent: bool = True) -> list:
    async def one(i: int):
        key = affinity(i) if callable(affinity) else affinity
        return await p.chat([{"role": "user", "content": f"hi {i}"}], SamplingParams(max_tokens=8), affinity=key)

    async def go():
        try:
            if concurrent:
                return await asyncio.gather(*(one(i) for i in range(n)))
            return [await one(i) for i in range(n)]
        finally:
            await p.close()

    return asyncio.run(go())


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_requests_are_balanced_by_outstanding_requests(a_b):
    a, b = a_b
    a.delay_s = b.delay_s = 0.2
    p = policy(a.url, b.url)
    run_calls(p, 20)
    assert a.requests == b.requests == 10  # 20 in flight at once: each takes the less busy endpoint
    assert p.endpoint_stats()[a.url] == {"calls": 10, "errors": 0, "ejections": 0, "recoveries": 0}
    assert p.name == f"openai:{a.url},{b.url}#m"


def test_a_failing_endpoint_is_retried_elsewhere_and_ejected(a_b):
    a, b = a_b
    a.mode = "error500"
    p = policy(a.url, b.url, eject_after=2, eject_s=60)
    comps = run_calls(p, 10, concurrent=False)
    assert len(comps) == 10 and all(c[0].text.endswith("search[shoes]") for c in comps)
    # calls alternate by (outstanding, calls) until A fails twice in a row; then it is out for 60 s
    assert a.requests == 2 and b.requests == 10 and p.retries == 2
    assert p.endpoint_stats()[a.url] == {"calls": 2, "errors": 2, "ejections": 1, "recoveries": 0}


def test_a_dead_and_a_dropping_endpoint_cost_no_call(a_b):
    a, b = a_b
    a.mode = "drop"
    p = policy(closed_port_url(), a.url, b.url, eject_after=1, eject_s=60)
    comps = run_calls(p, 12)
    assert len(comps) == 12 and b.requests == 12
    stats = p.endpoint_stats()
    assert [s["ejections"] for s in stats.values()] == [1, 1, 0]
    assert sum(s["errors"] for s in stats.values()) == p.retries >= 2


def test_an_ejected_endpoint_is_probed_after_its_backoff_and_comes_back(a_b):
    a, b = a_b
    a.mode = "error500"
    p = policy(a.url, b.url, eject_after=1, eject_s=0.3)

    async def go():
        async def call(key=None):
            return await p.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=8), affinity=key)

        try:
            await call()
            await call()  # A failed the first one and is ejected: B serves
            assert p.endpoint_stats()[a.url]["ejections"] == 1 and a.requests == 1
            await asyncio.sleep(0.4)
            await call()  # the probe: A still fails -> ejected again, for twice as long (0.6 s)
            assert a.requests == 2 and p.endpoint_stats()[a.url]["ejections"] == 2
            a.mode = "ok"
            await asyncio.sleep(0.2)
            await call()  # not due yet: B
            assert a.requests == 2
            await asyncio.sleep(0.5)
            await call()  # the probe succeeds: A is back
            assert a.requests == 3 and p.endpoint_stats()[a.url]["recoveries"] == 1
            await asyncio.gather(*(call() for _ in range(10)))
            assert a.requests >= 7  # balanced again (B served 4 alone)
        finally:
            await p.close()

    asyncio.run(go())


def test_calls_with_one_affinity_key_stay_on_one_endpoint_while_it_is_healthy(a_b):
    a, b = a_b
    a.delay_s = b.delay_s = 0.1
    p = policy(a.url, b.url, eject_after=1, eject_s=60)
    run_calls(p, 10, affinity="task-1")
    assert sorted([a.requests, b.requests]) == [0, 10]  # outstanding requests do not split a key
    first, other = (a, b) if a.requests else (b, a)
    first.reset(), other.reset()
    p2 = policy(a.url, b.url, eject_after=1, eject_s=60)
    run_calls(p2, 16, affinity=lambda i: f"task-{i % 4}")
    assert a.requests == b.requests == 8  # 4 keys, 2 per endpoint
    a.reset("error500"), b.reset()
    p3 = policy(a.url, b.url, eject_after=1, eject_s=60)
    run_calls(p3, 6, affinity="task-9", concurrent=False)
    assert b.requests == 6 and a.requests <= 1  # the key moved with the ejection and stays moved


def test_all_endpoints_failing_is_a_policy_error_after_the_retries(a_b):
    a, b = a_b
    a.mode = b.mode = "error500"
    p = policy(a.url, b.url, max_retries=3)
    with pytest.raises(PolicyError, match="InternalServerError after 4 attempts"):
        run_calls(p, 1)
    assert a.requests + b.requests == 4 and a.requests >= 1 and b.requests >= 1


def test_spec_forms_and_one_line_errors(tmp_path):
    spec = parse_spec("openai:http://h1:8000/v1,h2:8001#qwen")
    assert spec.endpoints() == ["http://h1:8000/v1", "h2:8001"] and spec.model == "qwen"
    listed = tmp_path / "endpoints.txt"
    listed.write_text("# one vLLM server per GPU node\nhttp://h1:8000/v1\n\n  http://h2:8000/v1  \n")
    spec = parse_spec(f"openai:@{listed}#qwen")
    check_model_available(spec)
    assert spec.endpoints() == ["http://h1:8000/v1", "http://h2:8000/v1"] and spec.model == "qwen"
    p = OpenAIPolicy(spec.endpoints(), model="qwen")
    assert [e.url for e in p.endpoints] == ["http://h1:8000/v1", "http://h2:8000/v1"]
    asyncio.run(p.close())
    for bad, message in [("openai:h1,,h2#m", "empty URL"), ("openai:@#m", "endpoints file after '@'"),
                         ("openai:h1,#m", "empty URL")]:
        with pytest.raises(ValueError, match=message):
            parse_spec(bad)
    with pytest.raises(ValueError, match="cannot read the endpoints file"):
        check_model_available(parse_spec(f"openai:@{tmp_path / 'missing.txt'}#m"))
    listed.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="lists no URL"):
        check_model_available(parse_spec(f"openai:@{listed}#m"))
    with pytest.raises(ValueError, match="listed twice"):
        OpenAIPolicy(["h1:8000", "http://h1:8000/v1"])


def test_hpl_eval_with_a_dead_endpoint_records_it_per_endpoint(a_b, tmp_path):
    """``hpl-eval`` with three endpoints, one refusing connections and one answering 500: every
    episode completes on the third; the summary counts each endpoint's calls, errors, ejections."""
    a, b = a_b
    a.mode = "error500"
    dead = closed_port_url()
    listed = tmp_path / "endpoints.txt"
    listed.write_text(f"{dead}\n{a.url}\n{b.url}\n")
    out = tmp_path / "run.json"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_eval", "--env", "webshop", "--split", "test",
                        "--limit", "4", "--workers", "1", "--max-turns", "3", "--agent", f"openai:@{listed}#m",
                        "--quiet", "--policy-arg", "backoff_s=0.01", "--policy-arg", "eject_after=2",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 4 and summary["failed_episodes"] == 0
    endpoints = summary["counters"]["llm_endpoints"]
    assert list(endpoints) == [dead, a.url, b.url]
    for url in (dead, a.url):
        assert endpoints[url]["ejections"] >= 1 and endpoints[url]["errors"] == endpoints[url]["calls"] >= 2
    assert endpoints[b.url]["errors"] == 0 and endpoints[b.url]["calls"] == summary["counters"]["llm_calls"] == 12
    assert "endpoint " in p.stdout and "ejections" in p.stdout


# ------------------------------------------------------------------ two real vLLM servers
@pytest.fixture
def two_vllm_servers(vllm_server, tiny_model, tmp_path):
    """A: a server of the test's own (it is killed); B: the session's shared server, same model."""
    from hpl_data.policies.vllm_server import VLLMServer

    a = VLLMServer(tiny_model, log_path=tmp_path / "vllm-a.log", startup_timeout_s=900).start()
    try:
        yield (a, vllm_server), tiny_model
    finally:
        a.stop()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two vLLM servers start on a shared 2-core machine
def test_two_vllm_servers_one_killed_mid_run(two_vllm_servers, tmp_path):
    """Episodes spread over two real vLLM servers; server A is SIGKILLed once every episode has
    had its first answer: the episodes it was serving go on at B, none fails, A's errors and
    ejection are counted. Then ``hpl-gen`` (MC labelling on the LLM) runs with A still dead and
    records it in the manifest."""
    from hpl_data.engine import EngineConfig, RolloutEngine
    from hpl_envs import make_env

    (a, b), model = two_vllm_servers
    spec = f"openai:{a.url},{b.url}#{model}"
    ids = make_env("webshop").task_ids("test")[:8]
    killed = []

    async def run():
        cfg = EngineConfig(workers=1, concurrency=8, sampling=SamplingParams(temperature=1.0, max_tokens=16))
        async with RolloutEngine("webshop", spec, env_kwargs={"max_turns": 5}, config=cfg,
                                 policy_options={"eject_after": 2, "backoff_s": 0.05}) as eng:
            episodes = asyncio.create_task(eng.run(ids))
            while eng.counters.llm_calls < len(ids) and not episodes.done():
                await asyncio.sleep(0.05)
            a.kill()  # mid-run: 8 episodes, each with turns left, half of them on A
            killed.append(eng.counters.llm_calls)
            return await episodes, eng.counters.as_dict()

    episodes, counters = asyncio.run(run())
    assert killed and len(episodes) == 8
    assert [e["error"] for e in episodes] == [None] * 8
    assert all(e["llm_calls"] == len(e["steps"]) >= 1 for e in episodes)
    ends = counters["llm_endpoints"]
    assert ends[a.url]["errors"] >= 2 and ends[a.url]["ejections"] >= 1  # A's episodes moved to B
    assert ends[b.url]["errors"] == 0
    assert ends[a.url]["calls"] - ends[a.url]["errors"] + ends[b.url]["calls"] == counters["llm_calls"]

    out = tmp_path / "gen"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--env", "webshop", "--split", "test",
                        "--limit", "1", "--policy", spec, "--levels", "step", "--mc-rollouts", "1",
                        "--max-turns", "7", "--policy-max-tokens", "16", "--policy-arg", "eject_after=2",
                        "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    counters = json.loads((out / "manifest.json").read_text())["counters"]
    assert counters["expert_kept"] == 1 and counters["mc_failed_tasks"] == 0 and counters["mc_llm_calls"] > 0
    for stage in ("policy", "mc"):  # the collect-policy episodes and the MC rollouts: all served by B
        alive = counters[f"{stage}_llm_endpoints"][b.url]
        # calls: every request B answered (a context-length refusal too, which is no LLM call)
        assert alive["errors"] == 0 and alive["calls"] >= counters[f"{stage}_llm_calls"] > 0
    dead = [counters[f"{stage}_llm_endpoints"][a.url] for stage in ("policy", "mc")]
    assert sum(d["calls"] for d in dead) == sum(d["errors"] for d in dead) >= 2  # ejected, then probed
    assert sum(d["ejections"] for d in dead) >= 1
