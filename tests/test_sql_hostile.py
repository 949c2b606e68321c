"""InterCode-SQL against a hostile agent and a hostile machine, on a real MariaDB server: what the
sandbox must hold (time, memory, isolation between episodes, snapshots) and a server lifecycle that
survives SIGKILL at any moment."""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hpl_envs import make_env
from hpl_envs.intercode_sql.env import check_statement
from hpl_envs.intercode_sql.servers import (
    AGENT_MAX_STATEMENT_TIME_S,
    LocalServer,
    ServerUnavailableError,
    connect,
    find_server_binary,
)

pytestmark = pytest.mark.skipif(find_server_binary() is None and not os.environ.get("CI"),
                                reason="no mariadbd/mysqld here (CI installs mariadb-server)")
ERROR = "Error executing query:"


@pytest.fixture(scope="module")
def env():
    e = make_env("intercode-sql", max_turns=1000)
    e.reset(options={"task_id": "0"})
    yield e
    e.close()


def timed_step(env, action):
    start = time.monotonic()
    obs, *_, info = env.step(action)
    return obs, time.monotonic() - start, info


@pytest.mark.parametrize("action", [
    "/*!SET STATEMENT max_statement_time=0 FOR*/ SELECT SLEEP(9)",
    "SELECT /*M!100000 SLEEP(9) + */ 1",
    "SELECT /*!50000 SLEEP(9) */ 1",
    "/*+ MAX_EXECUTION_TIME(0) */ SELECT SLEEP(9)",
    "SELECT 1 --/*!x SLEEP(9) */",  # `--` without a space is not a comment to MariaDB
])
def test_executable_comments_cannot_lift_the_limit(env, action):
    obs, took, _ = timed_step(env, action)
    assert took < env.time_limit_s and obs.startswith(ERROR) and "executable comments" in obs, (obs, took)


def test_time_limit_holds_without_the_text_check(env):
    """Server side: the account's own limit. Client side: a deadline that KILLs the query even when
    the session limit is gone (simulated by lifting it on the agent's connection directly)."""
    cnx = connect(env.shared.ensure_server().agent_args())
    cur = cnx.cursor()
    cur.execute("SELECT @@max_statement_time")
    assert cur.fetchone()[0] == AGENT_MAX_STATEMENT_TIME_S
    cnx.close()
    fast = make_env("intercode-sql", time_limit_s=1)
    fast.reset(options={"task_id": "0"})
    fast.session.connection().cursor().execute("SET SESSION max_statement_time = 0")
    obs, took, _ = timed_step(fast, "SELECT SLEEP(9)")
    assert "interrupted" in obs and took < 1 + 2, (obs, took)
    assert fast.step("SELECT COUNT(*) FROM people")[0] == "[(7,)]"  # the connection still works
    fast.close()


def test_the_session_alone_bounds_time_and_bytes_and_reconnects_into_its_database(env):
    """SqlSession without an env: its watchdog kills a statement that escaped the server's limit
    (through the session's own kill), a result is cut at its byte cap, and a connection killed
    from outside is replaced by one in the session's database."""
    from hpl_envs.intercode_sql.session import SqlSession, StatementError

    kills = []

    class CountingSession(SqlSession):
        def kill_query(self, connection_id: int) -> None:
            kills.append(connection_id)
            super().kill_query(connection_id)

    session = CountingSession(env.shared.ensure_server, time_limit_s=1, row_cap=100, result_byte_cap=1000)
    session.fresh("world_1")
    first = session.connection()
    first.cursor().execute("SET SESSION max_statement_time = 0")  # as if the server's limit were gone
    start = time.monotonic()
    with pytest.raises(StatementError, match="interrupted"):
        session.execute("SELECT SLEEP(9)")
    assert time.monotonic() - start < 1 + 2 and kills == [first.connection_id]
    cut = session.execute("SELECT REPEAT('x', 100) FROM city LIMIT 50")
    assert cut.truncated_bytes and not cut.wire_cut and 0 < len(str(cut.rows)) <= 1000
    assert len(kills) == 2  # the rest of the result was killed, not read
    killer = connect(env.shared.ensure_server().agent_args())
    killer.cursor().execute(f"KILL {session.connection().connection_id}")
    killer.close()
    serial = session.serial
    assert session.execute("SELECT DATABASE(), COUNT(*) FROM city").rows == [("world_1", 4079)]
    assert session.serial == serial + 1  # a new connection, in the session's database
    with pytest.raises(StatementError, match="doesn't exist"):
        session.execute("SELECT * FROM no_such_table")
    assert session.execute("SELECT 1").rows == [(1,)]
    session.close()


HUGE = {"rows of 8 MB (320 MB)": "SELECT REPEAT('x', 8000000) FROM world_1.city LIMIT 40",
        "one 320 MB row": "SELECT " + ", ".join(["REPEAT('x', 16000000)"] * 20) + " FROM world_1.city LIMIT 150",
        "4 MB of 800 kB rows": "SELECT REPEAT('x', 800000) FROM world_1.city LIMIT 150"}
_HUGE_SCRIPT = """
import json, resource, sys, time
from hpl_envs import make_env
env = make_env("intercode-sql", max_turns=20)
env.reset(options={"task_id": "0"})
env.step("SELECT 1")
before, out = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, {}
for name, sql in json.loads(sys.argv[1]).items():
    start = time.monotonic()
    obs, *_, info = env.step(sql)
    out[name] = {"s": time.monotonic() - start, "len": len(obs), "tail": obs[-120:], "cut": info["truncated_bytes"]}
out["after"] = env.step("SELECT Name FROM world_1.city WHERE ID = 1")[0]
out["peak_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(out))
"""


def test_huge_results_are_truncated_with_bounded_memory():
    """Peak RSS is measured in a fresh process (this one's peak is whatever earlier tests used)."""
    p = subprocess.run([sys.executable, "-c", _HUGE_SCRIPT, json.dumps(HUGE)], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print({k: v if not isinstance(v, dict) else {"s": round(v["s"], 2), "len": v["len"]} for k, v in out.items()})
    for name in HUGE:
        r = out[name]
        assert r["cut"] and "[result truncated" in r["tail"] and r["len"] <= 4_000_000 + 200, (name, r)
        assert r["s"] < 5 + 1 + 2, (name, r)
    assert out["after"] == "[('Kabul',)]"
    assert out["peak_growth_mb"] < 200, out["peak_growth_mb"]


def test_oversized_and_unparseable_statements_are_observations(env):
    obs, took, _ = timed_step(env, "SELECT 'x'" + " " * 17_000_000)
    assert took < 1 and obs == f"{ERROR} statement too long (over 32,768 bytes)", (obs[:200], took)
    assert env.step("SELECT " + "(" * 101 + "1" + ")" * 101)[0] == "[(1,)]"
    assert env.step("SELECT " + "1," * 5000 + "1")[0] == str([tuple([1] * 5001)])
    for action in ["SELECT " + "(" * 5000 + "1" + ")" * 5000, "SELECT " + "-" * 20000 + "1",
                   "SELECT " + "CONCAT(" * 3000 + "'a'" + ")" * 3000, "\x00" * 30000, "'" * 32000, "/*" * 16000]:
        obs, took, _ = timed_step(env, action)
        assert isinstance(obs, str) and took < 6, (action[:40], obs[:200], took)


def test_episodes_cannot_see_or_block_each_other():
    a, b = make_env("intercode-sql"), make_env("intercode-sql")
    a.reset(options={"task_id": "0"})
    b.reset(options={"task_id": "0"})
    for lock in ["SELECT GET_LOCK('hpl', 0)", "SELECT GET_LOCK/**/('hpl', 0)", "SELECT `GET_LOCK`('hpl', 0)"]:
        assert "locks are not allowed" in a.step(lock)[0]
        obs, took, _ = timed_step(b, lock.replace("0)", "5)"))
        assert "locks are not allowed" in obs and took < 1
    assert "locks are not allowed" in b.step("SELECT IS_USED_LOCK('hpl'), IS_FREE_LOCK('hpl')")[0]
    running = threading.Thread(target=a.step, args=("SELECT SLEEP(3), 'secret-of-a'",))
    running.start()
    time.sleep(0.3)
    for peek in ["SHOW PROCESSLIST", "SHOW FULL PROCESSLIST", "SELECT info FROM information_schema.PROCESSLIST",
                 "SELECT * FROM information_schema . `processlist`", "SHOW EXPLAIN FOR 1",
                 "EXPLAIN FOR CONNECTION 1", "SELECT * FROM information_schema.processlist -- x"]:
        obs = b.step(peek)[0] if not b._state.done and b._state.turn < b.max_turns else None
        if obs is None:
            b.reset(options={"task_id": "0"})
            obs = b.step(peek)[0]
        assert "secret-of-a" not in obs and "not allowed" in obs, (peek, obs)
    running.join()
    a.close()
    b.close()


def test_snapshots_keep_session_state(env):
    """The snapshot holds the database however USE was written; user variables and other session
    state cannot be made (refused), and restoring starts a fresh session."""
    env.reset(options={"task_id": "0"})
    assert "session state" in env.step("SELECT @n := COALESCE(@n, 0) + 1")[0]
    assert "INTO is not allowed" in env.step("SELECT 1 INTO @n")[0]
    assert env.step("SELECT @n")[0] == "[(None,)]"
    for use, db in [("/* c */ USE world_1", "world_1"), ("# c\nUSE car_1", "car_1"), ("USE/**/`concert_singer`",
                                                                                         "concert_singer")]:
        env.step(use)
        assert env.get_state().db == db
    snap = pickle.dumps(env.get_state())
    actions = ["SELECT COUNT(*) FROM singer", "-- c\nUSE world_1", "SELECT @n", "SELECT COUNT(*) FROM city",
               "SELECT DATABASE()"]
    uninterrupted = [env.step(a)[:4] for a in actions]
    env.reset(options={"task_id": "5"})
    env.step("USE car_1")
    env.set_state(pickle.loads(snap))
    assert [env.step(a)[:4] for a in actions] == uninterrupted
    assert uninterrupted[-1][0] == "[('world_1',)]" and uninterrupted[2][0] == "[(None,)]"


@pytest.mark.parametrize("sql,refused", [
    ("SELECT 'a -- b', '#', \"/*\" AS c", False), ("SELECT 1 -- /*!x */", True),
    ("SELECT '/*!50000 x */', 'GET_LOCK' AS word", True),  # in a string, yet refused: safe either way
    ("SELECT 1 INTO/**/@x", True), ("SHOW/* */WARNINGS", True), ("SELECT 'a';", False), ("SELECT ';'", False),
    ("SELECT 1; -- x\n SELECT 2", True), ("SELECT LAST_INSERT_ID(5)", True), ("SELECT FOUND_ROWS()", True),
])
def test_statement_checker_sees_what_the_server_runs(sql, refused):
    assert (check_statement(sql) is not None) == refused, check_statement(sql)


# --- server lifecycle -------------------------------------------------------------------------

_COLD_START = """
import sys
from hpl_envs import make_env
env = make_env("intercode-sql")
env.reset(options={"task_id": "0"})
env.step(env.task("0").gold)
print("reward", env.step("submit")[1])
"""


def _procs_mentioning(text: str, parent: int | None = None) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "ppid,pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if (text in line or parent is not None and line.split()[0] == str(parent))
            and "ps -eo" not in line]


def _start_run(cache: Path) -> subprocess.Popen:
    env = dict(os.environ, HPL_CACHE_DIR=str(cache), PYTHONPATH=os.getcwd())
    return subprocess.Popen([sys.executable, "-c", _COLD_START], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, seen, moment: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not seen(proc.pid):
        assert proc.poll() is None, f"the run ended before {moment}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{moment} never came"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_during_cold_start_then_a_fresh_run_works(tmp_path):
    cache = tmp_path / "cache"
    moments = {
        "mariadb-install-db": lambda pid: any("data.partial" in p and "--bootstrap" in p
                                              for p in _procs_mentioning(str(cache))),
        "server start": lambda pid: any("mariadbd" in p and "data.partial" not in p and "--bootstrap" not in p
                                        for p in _procs_mentioning(str(cache))),
        "dump load": lambda pid: any(p.split()[2].endswith(("/mariadb", "/mysql")) and p.split()[0] == str(pid)
                                     for p in _procs_mentioning(str(cache), parent=pid)),
    }
    for name, seen in moments.items():
        _kill_when(_start_run(cache), seen, name)
    start = time.monotonic()
    run = _start_run(cache)
    out, err = run.communicate(timeout=300)
    recovery = time.monotonic() - start
    print(f"cold start after three SIGKILLs: {recovery:.1f} s; messages: {err.strip()}")
    assert run.returncode == 0 and "reward 1.0" in out, err
    assert "interrupted run" in err  # strays left by the kills were stopped, not reused
    time.sleep(0.5)
    assert _procs_mentioning(str(cache)) == []


@pytest.mark.slow
def test_truncated_dump_is_refused_every_time(tmp_path):
    dump = Path(os.environ["HPL_DATA_DIR"]) / "intercode_sql" / "ic_spider_dbs.sql"
    text = dump.read_text(encoding="utf-8")
    cut = text.index("INSERT INTO", len(text) * 3 // 4) + 40  # mid-statement
    bad = tmp_path / "ic_spider_dbs.sql"
    bad.write_text(text[:cut], encoding="utf-8")
    server = LocalServer(bad, base_dir=tmp_path / "srv")
    for _ in range(2):  # the second run must not accept what the first one half-loaded
        with pytest.raises(ServerUnavailableError, match="truncated or damaged"):
            server.acquire()
    assert _procs_mentioning(str(tmp_path / "srv")) == []


def test_dump_missing_task_databases_is_refused_before_any_server_work(tmp_path, monkeypatch):
    """A dump cut between statements loads without an error; the env must notice the databases
    its tasks need are not there rather than fail episodes later with "Access denied"."""
    from hpl_envs.data import DataCorruptError
    from hpl_envs.intercode_sql.env import _Shared

    source = Path(os.environ["HPL_DATA_DIR"]) / "intercode_sql"
    (tmp_path / "intercode_sql").mkdir()
    (tmp_path / "intercode_sql" / "ic_spider_dev.json").symlink_to(source / "ic_spider_dev.json")
    text = (source / "ic_spider_dbs.sql").read_text(encoding="utf-8")
    (tmp_path / "intercode_sql" / "ic_spider_dbs.sql").write_text(text[: text.rindex("CREATE DATABASE")])
    monkeypatch.setenv("HPL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataCorruptError, match="truncated or not InterCode's dump"):
        _Shared(None, None)
