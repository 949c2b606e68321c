"""InterCode-SQL on a real MariaDB server started by hpl."""

import json
import os
import pickle
import random
import subprocess
import sys
import time

import pytest

from hpl_envs import make_env
from hpl_envs.agents import make_agent
from hpl_envs.intercode_sql.agents import gold_tables
from hpl_envs.intercode_sql.env import check_statement
from hpl_envs.intercode_sql.servers import LocalServer, ServerUnavailableError, UrlServer, find_server_binary

pytestmark = pytest.mark.skipif(find_server_binary() is None and not os.environ.get("CI"),
                                reason="no mariadbd/mysqld here (CI installs mariadb-server)")


@pytest.fixture(scope="module")
def sql_env():
    env = make_env("intercode-sql")
    yield env
    env.close()


def run(env, agent, task_id):
    obs, info = env.reset(options={"task_id": task_id})
    agent.reset(env, obs, info)
    done, trace = False, []
    while not done:
        obs, r, term, trunc, info = env.step(agent.act(obs, info))
        trace.append((obs, r, term, trunc))
        done = term or trunc
    return trace, info


def test_oracle_solves_every_task_with_valid_gold(sql_env):
    agent = make_agent("intercode-sql", "oracle")
    failures = []
    for tid in sql_env.task_ids("dev"):
        trace, info = run(sql_env, agent, tid)
        if trace[-1][1] != 1.0:
            failures.append(int(tid))
    assert len(sql_env.task_ids("dev")) == 1034
    # the six failures are broken gold SQL in Spider itself
    assert failures == [164, 178, 225, 531, 638, 802]


ABUSE = [
    "DROP TABLE people", "DELETE FROM poker_player", "UPDATE people SET Name = 'x'",
    "INSERT INTO people VALUES (99, 'x', 'y', '1990', 180)", "CREATE TABLE t (a int)", "ALTER TABLE people ADD c INT",
    "TRUNCATE TABLE people", "GRANT ALL ON *.* TO 'hpl_agent'@'%'", "SET GLOBAL max_connections = 1",
    "SET @x = 1", "LOCK TABLES people WRITE", "SELECT 1; DROP TABLE people", "SELECT * FROM people INTO OUTFILE '/tmp/x'",
    "SELECT 1 INTO @v", "CREATE TEMPORARY TABLE t AS SELECT * FROM people", "RENAME TABLE people TO p2",
    "WITH x AS (SELECT 1) DELETE FROM people", "REPLACE INTO people VALUES (1, 'a', 'b', 'c', 1)",
    "LOAD DATA INFILE '/etc/passwd' INTO TABLE people", "HANDLER people OPEN", "CALL mysql.foo()",
    "USE mysql", "SELECT * FROM mysql.user", "SHUTDOWN", "KILL 1", "FLUSH TABLES", "/*!50000 DROP TABLE people */",
]


def docker_engine_or_skip():
    from hpl_envs.intercode_sql.servers.docker import docker_client

    try:
        return docker_client()
    except ServerUnavailableError as e:
        pytest.skip(f"no Docker engine here (make test starts dockerd where it can): {e}")


@pytest.fixture(scope="module")
def docker_sql_env():
    """One container for this module, built from the cached image; gone at teardown."""
    from hpl_envs.intercode_sql.servers.docker import LABEL_PID, LABEL_ROLE, ROLE

    client = docker_engine_or_skip()
    env = make_env("intercode-sql", backend="docker")
    env.shared.ensure_server()
    mine = client.containers.list(filters={"label": [f"{LABEL_ROLE}={ROLE}", f"{LABEL_PID}={os.getpid()}"]})
    assert [c.attrs["HostConfig"]["NetworkMode"] for c in mine] == ["none"]  # no traffic to Docker's bridge
    yield env
    env.close()
    env.shared.server.release()
    env.shared.info = None
    mine = client.containers.list(all=True, filters={"label": [f"{LABEL_ROLE}={ROLE}", f"{LABEL_PID}={os.getpid()}"]})
    assert mine == []


@pytest.fixture(params=["local", "docker"])
def backend_env(request):
    """(backend, the module's env on it): tests that take it run on both servers."""
    return request.param, request.getfixturevalue("sql_env" if request.param == "local" else "docker_sql_env")


def test_abuse_leaves_databases_intact(backend_env):
    backend, sql_env = backend_env
    poker_tasks = [t for t in sql_env.task_ids("dev") if sql_env.task(t).db == "poker_player"]
    obs, info = sql_env.reset(options={"task_id": poker_tasks[0]})
    env = make_env("intercode-sql", backend=backend, max_turns=len(ABUSE) + 5)
    env.reset(options={"task_id": poker_tasks[0]})
    for action in ABUSE:
        obs, r, term, trunc, info = env.step(action)
        assert not term
        assert obs.startswith("Error executing query:") or obs == "None", (action, obs)
    # a cross join that would return ~10^10 rows and a sleep both end within the time limit
    start = time.monotonic()
    obs, *_ = env.step("SELECT SLEEP(100)")
    assert time.monotonic() - start < 10 and "interrupted" in obs
    start = time.monotonic()
    obs, *_ = env.step("SELECT COUNT(*) FROM people a, people b, people c, people d, people e, people f, "
                       "people g, people h, people i, people j, people k, people l")
    assert time.monotonic() - start < 10
    env.close()
    oracle = make_agent("intercode-sql", "oracle")
    for tid in poker_tasks:
        trace, info = run(sql_env, oracle, tid)
        assert trace[-1][1] == 1.0, tid


def test_row_cap(sql_env):
    env = make_env("intercode-sql", row_cap=3)
    env.reset(options={"task_id": "0"})
    obs, r, term, trunc, info = env.step("SELECT * FROM people")
    assert info["truncated_rows"] and obs.count("),") == 2
    env.close()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_snapshot_then_continue_equals_uninterrupted(sql_env, depth):
    rng = random.Random(depth)
    for tid in rng.sample(sql_env.task_ids("dev"), 5):
        task = sql_env.task(tid)
        actions = ["SHOW TABLES", "SELECT 1", *[f"DESC {t}" for t in gold_tables(task.gold)], "USE world_1",
                   "SHOW TABLES", f"USE {task.db}", task.gold, "submit"]
        sql_env.reset(options={"task_id": tid})
        outputs, snap = [], None
        for i, a in enumerate(actions):
            if i == depth:
                snap = pickle.dumps(sql_env.get_state())
            outputs.append(sql_env.step(a)[:4])
            if outputs[-1][2] or outputs[-1][3]:
                break
        sql_env.reset(options={"task_id": "5"})
        sql_env.step("USE car_1")
        sql_env.set_state(pickle.loads(snap))
        for a, expected in zip(actions[depth:], outputs[depth:]):
            assert sql_env.step(a)[:4] == expected


def test_fuzzed_actions_never_raise(sql_env):
    rng = random.Random(7)
    pieces = ["SELECT", "*", "FROM", "people", "WHERE", "'", '"', ";", "--", "/*", "*/", "(", ")", "\\", "\x00",
              "UNION", "JOIN", "poker_player", "é", "漢", "🙂", "\n", "submit", "LIMIT", "1e309", "`", "@@version"]
    obs, info = sql_env.reset(options={"task_id": "0"})
    for _ in range(1500):
        action = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        if action.startswith("submit") or action.strip().lower() == "skip":
            action = "x" + action
        obs, r, term, trunc, info = sql_env.step(action)
        if term or trunc:
            sql_env.reset(options={"task_id": str(rng.randrange(1034))})
    assert make_agent("intercode-sql", "oracle")  # the env is still usable
    trace, _ = run(sql_env, make_agent("intercode-sql", "oracle"), "0")
    assert trace[-1][1] == 1.0


def test_statement_checker():
    assert check_statement("SELECT 1") is None
    assert check_statement("  select * from t;  ") is None
    assert check_statement("(SELECT 1) UNION (SELECT 2)") is None
    assert check_statement("-- comment\nSHOW TABLES") is None
    assert "multiple" in check_statement("SELECT 1; SELECT 2")
    assert "not allowed" in check_statement("DROP TABLE x")
    assert check_statement("") == "empty statement"


def test_splits_are_disjoint_by_database(sql_env):
    train = {sql_env.task(t).db for t in sql_env.task_ids("train")}
    test = {sql_env.task(t).db for t in sql_env.task_ids("test")}
    assert train and test and not train & test
    assert len(sql_env.task_ids("train")) + len(sql_env.task_ids("test")) == 1034
    assert 0.25 <= len(sql_env.task_ids("test")) / 1034 <= 0.45


def test_recorded_gpt4_runs_replay(sql_env):
    """InterCode's GPT-4 recordings: most observations and (recording-scored) rewards reproduce."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from hpl_envs.data import require

    runs = json.loads(require("expert/intercode_sql_results/gpt-4/ic_sql_multiturn_gpt-4_10_turns.json",
                              "intercode-sql").read_text())
    env = make_env("intercode-sql", max_turns=100, kendall_tau=False)
    obs_ok = rew_ok = total = 0
    for key in sorted(runs, key=int)[:150]:
        th = runs[key]["turn_history"]
        env.reset(options={"task_id": key})
        for a, o, r in zip(th["actions"], th["observations"], th["rewards"]):
            if a in ("blocked", "skip", "submit") or o.startswith("Format your SQL"):
                continue
            obs, *_ = env.step(a)
            total += 1
            obs_ok += obs == o
            rew_ok += env.evaluate()[0] == r
    env.close()
    assert obs_ok / total > 0.9 and rew_ok / total > 0.97, (obs_ok, rew_ok, total)


def test_url_backend_against_the_running_server(sql_env):
    from hpl_envs.intercode_sql.servers import connect

    info = sql_env.shared.ensure_server()
    cnx = connect(info.admin_args())  # root is socket-only; make a TCP admin like a user's own server has
    cnx.cursor().execute("CREATE USER IF NOT EXISTS 'urltest'@'127.0.0.1' IDENTIFIED BY 'pw'")
    cnx.cursor().execute("GRANT ALL PRIVILEGES ON *.* TO 'urltest'@'127.0.0.1' WITH GRANT OPTION")
    cnx.close()
    url = f"mysql://urltest:pw@127.0.0.1:{info.port}"
    server = UrlServer(url, sql_env.shared.dump)
    got = server.acquire()
    assert got.backend == "url" and got.flavor == "mariadb"
    env = make_env("intercode-sql", server=url)
    obs, info2 = env.reset(options={"task_id": "0"})
    env.step(sql_env.task("0").gold)
    assert env.step("submit")[1] == 1.0
    env.close()


def test_missing_binary_has_install_hint(monkeypatch, tmp_path):
    import hpl_envs.intercode_sql.servers.local as local_backend

    monkeypatch.setattr(local_backend, "find_server_binary", lambda: None)
    with pytest.raises(ServerUnavailableError, match="apt-get install mariadb-server"):
        LocalServer(tmp_path / "dump.sql")


def test_bad_url_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="mysql://"):
        UrlServer("postgres://x", tmp_path / "d.sql")
    with pytest.raises(ServerUnavailableError, match="cannot connect"):
        UrlServer("mysql://u:p@127.0.0.1:9", tmp_path / "d.sql").acquire()


def test_eval_run_leaves_no_server_behind(tmp_path):
    """A whole hpl-eval run in its own cache dir starts its own server and stops it at exit."""
    env = dict(os.environ, HPL_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_eval", "--env", "intercode-sql", "--agent", "oracle",
                        "--split", "test", "--limit", "40", "--workers", "2", "--out", str(out), "--quiet"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["success_rate"] == 1.0
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path / "cache") not in ps


def test_concurrent_processes_share_one_server(tmp_path):
    """Two hpl processes on the same cache dir use one server; the last to finish stops it."""
    env = dict(os.environ, HPL_CACHE_DIR=str(tmp_path / "shared-cache"))
    cmd = [sys.executable, "-m", "hpl_data.cli_eval", "--env", "intercode-sql", "--agent", "oracle", "--split",
           "dev", "--limit", "150", "--quiet"]
    procs = [subprocess.Popen(cmd + ["--out", str(tmp_path / f"r{i}.json")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for i in range(2):
        assert json.loads((tmp_path / f"r{i}.json").read_text())["episodes"] == 150
    time.sleep(0.5)
    assert str(tmp_path / "shared-cache") not in subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True,
                                                                text=True).stdout


def test_without_a_choice_the_error_lists_each_backend_tried(monkeypatch, tmp_path):
    import hpl_envs.intercode_sql.servers as srv
    import hpl_envs.intercode_sql.servers.local as local_backend

    monkeypatch.setattr(local_backend, "find_server_binary", lambda: None)
    from hpl_envs.intercode_sql.servers.docker import SHARE_ENV

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.delenv(SHARE_ENV, raising=False)  # not this process's docker_sql_env container
    with pytest.raises(ServerUnavailableError) as err:
        srv.make_server(None, tmp_path / "dump.sql").acquire()
    lines = str(err.value).splitlines()
    assert lines[1].startswith("  local: no mariadbd or mysqld") and any(x.startswith("  docker: no Docker engine")
                                                                         for x in lines), lines
    with pytest.raises(ValueError, match="unknown backend"):
        srv.make_server("podman", tmp_path / "dump.sql")


def _hpl_containers(client, exclude_pid: int) -> list:
    from hpl_envs.intercode_sql.servers.docker import LABEL_PID, LABEL_ROLE, ROLE

    return [c for c in client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}={ROLE}"})
            if c.labels.get(LABEL_PID) != str(exclude_pid)]


@pytest.mark.slow
def test_docker_eval_run_leaves_no_container_even_after_sigkill(tmp_path, docker_sql_env):
    """An hpl-eval run SIGKILLed mid-run leaves its container; the next run prunes it and removes
    its own at exit. (docker_sql_env: the image is built once, by the fixture.)"""
    import signal

    from hpl_envs.intercode_sql.servers.docker import SHARE_ENV

    client = docker_engine_or_skip()
    env = {k: v for k, v in os.environ.items() if k != SHARE_ENV}
    cmd = [sys.executable, "-m", "hpl_data.cli_eval", "--env", "intercode-sql", "--agent", "oracle", "--split", "dev",
           "--env-arg", "backend=docker", "--workers", "2", "--quiet"]
    victim = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed.json")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _hpl_containers(client, os.getpid()) and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.2)
    time.sleep(1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = _hpl_containers(client, os.getpid())
    assert [c.labels["hpl.owner_pid"] for c in left] == [str(victim.pid)]
    out = tmp_path / "next.json"
    p = subprocess.run(cmd + ["--limit", "30", "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["success_rate"] == 1.0
    assert _hpl_containers(client, os.getpid()) == []
