"""A misbehaving OpenAI-compatible server (a real HTTP server on 127.0.0.1): every malformed
answer is an episode-level error, retried like a 5xx and recorded; a server that accepts and never
answers costs the per-call deadline, not attempts x request timeout; ``hpl-eval`` finishes its
run and writes its outputs whatever the server does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("openai")

from llm_helpers import ScriptedServer  # noqa: E402

from hpl_data.policies import MalformedResponseError, PolicyError, SamplingParams  # noqa: E402
from hpl_data.policies.openai_backend import OpenAIOptions, OpenAIPolicy  # noqa: E402


def completion(content: object = "Thought: look\nAction: search[shoes]", **choice: object) -> bytes:
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         **choice}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    return json.dumps(body).encode()


MALFORMED = {
    "invalid json": b"{not json",
    "html page": b"<html><body>502 Bad Gateway</body></html>",
    "empty body": b"",
    "json array": b"[1, 2, 3]",
    "json string": b'"ok"',
    "lone surrogate": completion().replace(b"look", b"\\ud800"),
    "no choices": b'{"id": "c"}',
    "empty choices": b'{"choices": []}',
    "choices not a list": b'{"choices": "abc"}',
    "choice without message": b'{"choices": [{}]}',
    "content not text": completion(content=42),
    "bad logprobs": completion(logprobs={"content": [{"token": "a", "logprob": "high", "bytes": None,
                                                      "top_logprobs": []}]}),
}


class BadServer(ScriptedServer):
    """Answers every request with ``body`` (HTTP 200, JSON content type), or never answers."""

    answers_get = True

    def __init__(self) -> None:
        self.bodies: list[bytes] = [completion()]  # answered in turn; the last one repeats
        self.hang = False
        self.requests = 0
        super().__init__()

    def handle(self, request) -> None:
        self.requests += 1
        if self.hang:
            time.sleep(30)
            return
        self.reply(request, 200, self.bodies[min(self.requests, len(self.bodies)) - 1])

    def answer(self, *bodies: bytes) -> None:
        self.bodies, self.requests, self.hang = list(bodies), 0, False


@pytest.fixture(scope="module")
def bad_server():
    srv = BadServer()
    yield srv
    srv.close()


def chat(policy: OpenAIPolicy):
    async def go():
        try:
            return await policy.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=8))
        finally:
            await policy.close()
    return asyncio.run(go())


def quick_policy(url: str, **kw) -> OpenAIPolicy:
    return OpenAIPolicy(url, model="m", options=OpenAIOptions(backoff_s=0.01, backoff_max_s=0.02, **kw))


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_answers_are_retried_then_a_policy_error(bad_server, name):
    bad_server.answer(MALFORMED[name])
    policy = quick_policy(bad_server.url, max_retries=2)
    with pytest.raises(PolicyError, match="MalformedResponseError after 3 attempts: malformed response"):
        chat(policy)
    assert bad_server.requests == 3 and policy.retries == 2 and policy.malformed_responses == 3


def test_one_malformed_answer_then_a_good_one(bad_server):
    bad_server.answer(MALFORMED["lone surrogate"], completion("Action: click[buy now]"))
    policy = quick_policy(bad_server.url, max_retries=2)
    (comp,) = chat(policy)
    assert comp.text == "Action: click[buy now]" and comp.prompt_tokens == 5
    assert policy.retries == 1 and bad_server.requests == 2
    assert issubclass(MalformedResponseError, PolicyError)


def test_a_server_that_never_answers_costs_the_call_deadline(bad_server):
    bad_server.answer(completion())
    bad_server.hang = True
    policy = quick_policy(bad_server.url, max_retries=5, request_timeout=120.0, call_timeout_s=1.5)
    t0 = time.perf_counter()
    with pytest.raises(PolicyError, match="no answer within the 1.5 s call deadline"):
        chat(policy)
    assert time.perf_counter() - t0 < 5  # without the deadline: 6 attempts x 120 s


def test_hpl_eval_records_malformed_answers_and_writes_its_outputs(bad_server, tmp_path):
    """Half the answers are malformed, the rest a lone surrogate: the run ends normally (exit 0)
    with every episode recorded as failed, and its summary and trajectories written."""
    bad_server.answer(*[MALFORMED["json array"], MALFORMED["lone surrogate"]] * 1000)
    out = tmp_path / "run.json"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_eval", "--env", "webshop", "--split", "test",
                        "--limit", "3", "--workers", "1", "--agent", f"openai:{bad_server.url}#m", "--quiet",
                        "--policy-arg", "backoff_s=0.01", "--policy-arg", "max_retries=1", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["episodes"] == 3 and summary["failed_episodes"] == 3
    assert all("malformed response" in e["error"] for e in summary["per_episode"])
    assert out.with_suffix(".trajectories.parquet").stat().st_size > 0
