"""hpl-serve: OpenEnv's own client (EnvClient, transport unchanged) against the server on 127.0.0.1.

One server per env for the module, run in a thread of this process (uvicorn and the real worker
pool: env worker processes); the oracle agents plan from a local env (their privileged knowledge)
and act on the observations the server sends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from websockets.sync.client import connect as ws_connect

from hpl_data.serve.client import HplEnvClient
from hpl_data.serve.config import ServeConfig
from hpl_data.serve.server import uvicorn_config
from hpl_envs import make_env
from hpl_envs.registry import profile

TTL_S = 4.0  # the webshop server's idle TTL (its test waits this long)
MAX_SESSIONS = 8
HTTP = httpx.Client(timeout=60)  # a loaded machine answers slowly; a 4xx comes back at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving the app in a thread of this process; its worker pool is real."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.server = uvicorn.Server(uvicorn_config(config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{config.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "hpl-serve did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def manager(self):
        return self.server.config.app.state.manager


@pytest.fixture(scope="module")
def webshop_server():
    config = ServeConfig(env="webshop", split="test", workers=2, port=free_port(), max_sessions=MAX_SESSIONS,
                         session_ttl_s=TTL_S, max_action_chars=4096)
    with ServerThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def sql_server():
    config = ServeConfig(env="intercode-sql", split="test", workers=2, port=free_port())
    with ServerThread(config) as server:
        yield server


def oracle_class(env_name: str):
    module, _, name = profile(env_name).agents["oracle"].partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def play_oracle(url: str, env_name: str, local_env, task_id: str) -> tuple[float, list[str]]:
    """The env's oracle through the server: it plans from ``local_env`` (its privileged knowledge)
    and acts on the server's observations. (final reward, observations)."""
    agent = oracle_class(env_name)()
    with HplEnvClient(base_url=url).sync() as env:
        result = env.reset(task_id=task_id)
        obs = result.observation
        agent.reset(local_env, obs.text, obs.info)
        seen = [obs.text]
        for _ in range(20):
            result = env.step(agent.act(obs.text, obs.info))
            obs = result.observation
            seen.append(obs.text)
            if result.done:
                return float(result.reward), seen
    raise AssertionError(f"the oracle did not finish task {task_id}")


def oracle_tasks(local_env, env_name: str, n: int = 3) -> list[str]:
    """The first ``n`` test tasks the oracle solves in-process (the reward fails a few goals by design)."""
    from hpl_envs.agents import play

    agent_cls = oracle_class(env_name)
    picked = []
    for task_id in local_env.task_ids("test"):
        if play(local_env, agent_cls(), task_id)[1] == 1.0:
            picked.append(task_id)
        if len(picked) == n:
            return picked
    raise AssertionError("too few oracle-solvable tasks")


@pytest.mark.parametrize("env_name", ["webshop", "intercode-sql"])
def test_oracle_reaches_reward_one_through_openenv_client(env_name, request):
    server = request.getfixturevalue("webshop_server" if env_name == "webshop" else "sql_server")
    local = make_env(env_name)
    try:
        for task_id in oracle_tasks(local, env_name):
            reward, seen = play_oracle(server.url, env_name, local, task_id)
            assert reward == 1.0, (env_name, task_id, seen[-1][:300])
    finally:
        local.close()


def test_openenv_http_routes_and_schema(webshop_server):
    url = webshop_server.url
    assert HTTP.get(f"{url}/health").json() == {"status": "healthy"}
    schema = HTTP.get(f"{url}/schema").json()
    assert "action" in schema["action"]["properties"] and "text" in schema["observation"]["properties"]
    assert HTTP.get(f"{url}/metadata").json()["name"] == "webshop"
    tasks = HTTP.get(f"{url}/hpl/tasks", params={"split": "test"}).json()["task_ids"]
    assert tasks[:3] == ["0", "1", "2"] and len(tasks) == len(make_env("webshop").task_ids("test"))
    reset = HTTP.post(f"{url}/reset", json={"task_id": "5"}).json()
    sid = reset["observation"]["session_id"]
    assert reset["done"] is False and reset["observation"]["task_id"] == "5"
    step = HTTP.post(f"{url}/step", json={"action": {"action": "search[shoes]"}, "session_id": sid}).json()
    assert "Page 1" in step["observation"]["text"] and step["reward"] == 0.0
    assert HTTP.get(f"{url}/state", params={"session_id": sid}).json()["step_count"] == 1
    assert HTTP.delete(f"{url}/hpl/sessions/{sid}").status_code == 200
    # a seeded reset without a task draws the same task from the split every time
    drawn = {HTTP.post(f"{url}/reset", json={"seed": 7}).json()["observation"]["task_id"] for _ in range(2)}
    assert len(drawn) == 1 and drawn <= set(tasks)
    for sid in list(webshop_server.manager.sessions):
        HTTP.delete(f"{url}/hpl/sessions/{sid}")


ACTIONS = ["click[next >]", "click[< prev]", "search[red dress]", "click[next >]"]


def test_fork_continues_exactly_like_its_parent(webshop_server):
    url = webshop_server.url
    with HplEnvClient(base_url=url).sync() as parent:
        obs = parent.reset(task_id="11").observation
        parent.step("search[long sleeve shirt for men]")
        sid = obs.session_id
        helper = HplEnvClient(base_url=url)
        child_id = helper.fork(sid)
        assert child_id != sid
        with HplEnvClient(base_url=url, session_id=child_id).sync() as child:
            assert child.state().step_count == 1 and child.state().task_id == "11"
            for action in ACTIONS:
                a, b = parent.step(action), child.step(action)
                assert a.observation.text == b.observation.text and a.reward == b.reward
                assert a.observation.step == b.observation.step
        # snapshot / restore: the parent goes back and replays identically
        snap = helper.snapshot(sid)
        first = [parent.step(a).observation.text for a in ACTIONS[:2]]
        assert helper.restore(sid, snap).step_count == 1 + len(ACTIONS)
        assert [parent.step(a).observation.text for a in ACTIONS[:2]] == first
        helper.close_session(child_id)


# --- bad input: a 4xx (or an OpenEnv error frame) with a message, and the server keeps serving
def _still_serving(url: str) -> None:
    with HplEnvClient(base_url=url).sync() as env:
        assert env.reset(task_id="1").observation.task_id == "1"
        assert "Page 1" in env.step("search[shoes]").observation.text


def _ws_url(url: str, query: str = "") -> str:
    return url.replace("http://", "ws://") + "/ws" + query


def test_malformed_json(webshop_server):
    url = webshop_server.url
    r = HTTP.post(f"{url}/reset", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()
    r = HTTP.post(f"{url}/step", json={"action": "search[x]"})  # action must be an object
    assert r.status_code == 422
    with ws_connect(_ws_url(url)) as ws:
        ws.send("{not json")
        err = json.loads(ws.recv())
        assert err["type"] == "error" and err["data"]["code"] == "INVALID_JSON"
        ws.send(json.dumps([1, 2]))
        assert json.loads(ws.recv())["data"]["code"] == "VALIDATION_ERROR"
        ws.send(json.dumps({"type": "step", "data": {"act": "search[x]"}}))
        err = json.loads(ws.recv())["data"]
        assert err["code"] == "VALIDATION_ERROR" and "action" in err["message"]
        ws.send(json.dumps({"type": "fly"}))
        assert json.loads(ws.recv())["data"]["code"] == "UNKNOWN_TYPE"
        ws.send(json.dumps({"type": "step", "data": {"action": "search[x]"}}))  # before any reset
        assert "reset it first" in json.loads(ws.recv())["data"]["message"]
        ws.send(json.dumps({"type": "reset", "data": {"task_id": "no-such-task"}}))
        err = json.loads(ws.recv())["data"]
        assert err["code"] == "EXECUTION_ERROR" and "no-such-task" in err["message"]
        ws.send(json.dumps({"type": "reset", "data": {"task_id": "2"}}))  # the same socket goes on
        assert json.loads(ws.recv())["data"]["observation"]["task_id"] == "2"
    assert HTTP.get(f"{url}/hpl/tasks", params={"split": "nope"}).status_code == 400
    _still_serving(url)


def test_unknown_session(webshop_server):
    url = webshop_server.url
    r = HTTP.post(f"{url}/step", json={"action": {"action": "search[x]"}, "session_id": "nope"})
    assert r.status_code == 404 and "unknown session" in r.json()["detail"]
    assert HTTP.post(f"{url}/step", json={"action": {"action": "search[x]"}}).status_code == 400
    assert HTTP.post(f"{url}/hpl/sessions/nope/fork").status_code == 404
    assert HTTP.post(f"{url}/hpl/sessions/nope/restore", json={"snapshot_id": "x"}).status_code == 404
    with ws_connect(_ws_url(url, "?session_id=nope")) as ws:
        err = json.loads(ws.recv())
        assert err["data"]["code"] == "SESSION_ERROR" and "unknown session" in err["data"]["message"]
    with HplEnvClient(base_url=url, session_id="nope").sync() as env, pytest.raises(RuntimeError, match="unknown"):
        env.reset()
    _still_serving(url)


def test_huge_action(webshop_server):
    url = webshop_server.url
    huge = "search[" + "x" * 1_000_000 + "]"
    sid = HTTP.post(f"{url}/reset", json={"task_id": "1"}).json()["observation"]["session_id"]
    r = HTTP.post(f"{url}/step", json={"action": {"action": huge}, "session_id": sid})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = HTTP.post(f"{url}/step", json={"action": {"action": "search[" + "x" * 5000 + "]"}, "session_id": sid})
    assert r.status_code == 422 and "--max-action-chars" in r.json()["detail"]
    chunked = HTTP.post(f"{url}/step", content=iter([b'{"action": {"action": "', b"x" * 100_000, b'"}}']),
                         headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    with HplEnvClient(base_url=url).sync() as env:
        env.reset(task_id="1")
        with pytest.raises(RuntimeError, match="limit"):
            env.step(huge)
        assert "Page 1" in env.step("search[shoes]").observation.text  # the session goes on
    HTTP.delete(f"{url}/hpl/sessions/{sid}")
    _still_serving(url)


def test_more_sessions_than_max(webshop_server):
    url = webshop_server.url
    opened = []
    for _ in range(MAX_SESSIONS + 1):  # sessions of earlier tests may still be closing: open until refused
        r = HTTP.post(f"{url}/reset", json={"task_id": "1"})
        if r.status_code != 200:
            break
        opened.append(r.json()["observation"]["session_id"])
    assert r.status_code == 429 and "--max-sessions" in r.json()["detail"]
    assert len(webshop_server.manager.sessions) == MAX_SESSIONS
    with HplEnvClient(base_url=url).sync() as env, pytest.raises(RuntimeError, match="CAPACITY_REACHED"):
        env.reset()
    assert HTTP.post(f"{url}/hpl/sessions/{opened[0]}/fork").status_code == 429
    assert not webshop_server.manager.sessions[opened[0]].snapshots  # a refused fork saves nothing
    for sid in opened:
        assert HTTP.delete(f"{url}/hpl/sessions/{sid}").status_code == 200
    _still_serving(url)


def test_idle_sessions_expire_after_the_ttl(webshop_server):
    url = webshop_server.url
    sid = HTTP.post(f"{url}/reset", json={"task_id": "1"}).json()["observation"]["session_id"]
    with HplEnvClient(base_url=url).sync() as env:
        env.reset(task_id="1")
        ws_sid = env.state().session_id
        time.sleep(TTL_S * 1.5 + 1)
        r = HTTP.post(f"{url}/step", json={"action": {"action": "search[x]"}, "session_id": sid})
        assert r.status_code == 410 and "expired" in r.json()["detail"]
        assert ws_sid not in webshop_server.manager.sessions
        with pytest.raises(RuntimeError, match="expired"):
            env.step("search[shoes]")
    _still_serving(url)


def test_auth_and_host_checks(cli_error):
    from hpl_data import cli_serve

    msg = cli_error(cli_serve, ["--env", "webshop", "--host", "0.0.0.0"])
    assert "--token" in msg
    assert "--workers" in cli_error(cli_serve, ["--env", "webshop", "--workers", "0"])


def test_cli_token_and_sigterm(tmp_path):
    """The console script: bearer auth on HTTP and WebSocket, and SIGTERM ends it with its workers."""
    import psutil

    port, token = free_port(), "s3cret"
    proc = subprocess.Popen([sys.executable, "-m", "hpl_data.cli_serve", "--env", "webshop", "--workers", "1",
                             "--port", str(port), "--token", token], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            try:
                if HTTP.get(f"{url}/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert HTTP.get(f"{url}/health").status_code == 401
        assert HTTP.get(f"{url}/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(ConnectionError, match="403"), HplEnvClient(base_url=url).sync() as env:
            env.reset()
        with HplEnvClient(base_url=url, token=token).sync() as env:
            assert env.reset(task_id="4").observation.task_id == "4"
            assert HplEnvClient(base_url=url, token=token).tasks("test")[:2] == ["0", "1"]
        workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert workers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert "terminated" in proc.stderr.read()
        time.sleep(0.5)
        assert not [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_docker_image_serves_on_loopback():
    """docker/env-server.Dockerfile, built offline (hpl_data.serve.image), runs hpl-serve on the host's
    127.0.0.1 (host networking, no bridge); OpenEnv's client plays through it; SIGTERM stops it."""
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to reach an engine
        pytest.skip(f"no Docker engine answers here (make docker-engine starts one): {str(e)[:200]}")
    from hpl_data.serve.image import build

    tag = build(client)
    port = free_port()
    data = os.environ["HPL_DATA_DIR"]
    container = client.containers.run(tag, ["--env", "webshop", "--workers", "1", "--port", str(port)],
                                      network_mode="host", volumes={data: {"bind": "/data", "mode": "ro"}},
                                      labels={"hpl.role": "env-server-test"}, detach=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            container.reload()
            assert container.status in ("created", "running"), container.logs()[-2000:]
            assert time.monotonic() < deadline, container.logs()[-2000:]
            try:
                if HTTP.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with HplEnvClient(base_url=url).sync() as env:
            assert env.reset(task_id="3").observation.task_id == "3"
            assert "Page 1" in env.step("search[dual band streaming media player]").observation.text
        container.stop(timeout=20)  # SIGTERM
        assert container.wait(timeout=30)["StatusCode"] == 128 + signal.SIGTERM
        assert b"terminated (SIGTERM)" in container.logs()
    finally:
        container.remove(force=True)
