"""InterCode-SQL as a Gymnasium env on a real MySQL-compatible server, safe against the agent."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlparse

from hpl_envs.core import HplTextEnv, TaskNotFoundError
from hpl_envs.data import DataCorruptError, require
from hpl_envs.intercode_sql import compat
from hpl_envs.intercode_sql.reward import sql_reward
from hpl_envs.intercode_sql.server import ServerInfo, ServerUnavailableError, connect, make_server

ALLOWED_FIRST_WORDS = {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "WITH", "USE", "VALUES", "TABLE"}
BLOCKED_MESSAGE = ("only one read-only statement per action is allowed "
                   "(SELECT, SHOW, DESCRIBE, EXPLAIN, WITH ... SELECT, USE)")


@dataclass
class SqlTask:
    index: int
    db: str
    query: str
    gold: str
    hardness: str


@dataclass
class SqlState:
    task_id: str
    db: str  # the database the agent connection uses (USE can change it)
    observation: Any = None  # InterCode's last observation: rows, an error string, or None
    turn: int = 0
    done: bool = False
    reward: float = 0.0
    reward_parts: dict | None = None
    actions: list[str] = field(default_factory=list)
    truncated_rows: bool = False

    def copy(self) -> SqlState:
        obs = list(self.observation) if isinstance(self.observation, list) else self.observation
        return replace(self, observation=obs, actions=list(self.actions),
                       reward_parts=None if self.reward_parts is None else dict(self.reward_parts))


def load_tasks(path: Path) -> list[SqlTask]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        return [SqlTask(i, r["db"], r["query"], r["gold"], r.get("hardness", "")) for i, r in enumerate(records)]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataCorruptError(f"{path}: not an InterCode task list ({e})") from e


def database_split(tasks: list[SqlTask], test_share: float = 0.3) -> dict[str, set[str]]:
    """Databases for train/test: ordered by a hash of their name, test takes them until it holds
    ``test_share`` of the tasks. No database is in both, so no schema leaks from train to test."""
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.db] = counts.get(t.db, 0) + 1
    order = sorted(counts, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
    test, n = set(), 0
    for db in order:
        if n >= test_share * len(tasks):
            break
        test.add(db)
        n += counts[db]
    return {"test": test, "train": set(counts) - test}


def check_statement(sql: str) -> str | None:
    """None if ``sql`` is one allowed statement, else the reason it is refused."""
    statements = [s for s in sqlparse.split(sql) if s.strip().rstrip(";").strip()]
    if len(statements) != 1:
        return "empty statement" if not statements else "multiple statements are not allowed"
    parsed = sqlparse.parse(statements[0])[0]
    first = next((t for t in parsed.flatten() if not t.is_whitespace and t.ttype not in sqlparse.tokens.Comment
                  and t.value not in ("(",)), None)
    word = first.value.upper() if first is not None else ""
    if word not in ALLOWED_FIRST_WORDS:
        return f"{word or 'this'} statements are not allowed"
    if re.search(r"\bINTO\s+(OUTFILE|DUMPFILE|@)", statements[0], re.IGNORECASE):
        return "SELECT ... INTO is not allowed"
    return None


class _Shared:
    """Tasks, the server and cached gold results: once per process."""

    _cache: dict[tuple, _Shared] = {}
    _lock = threading.Lock()

    def __init__(self, backend: str | None, server: str | None) -> None:
        self.tasks = load_tasks(require("intercode_sql/ic_spider_dev.json", "intercode-sql"))
        self.dump = require("intercode_sql/ic_spider_dbs.sql", "intercode-sql")
        self.splits = database_split(self.tasks)
        self.server = make_server(backend, self.dump, server)
        self.info: ServerInfo | None = None

    @classmethod
    def get(cls, backend: str | None, server: str | None) -> _Shared:
        key = (backend, server)
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(backend, server)
            return cls._cache[key]

    def ensure_server(self) -> ServerInfo:
        if self.info is None:
            self.info = self.server.acquire()
        return self.info


class InterCodeSqlEnv(HplTextEnv):
    """
    ## Description
    InterCode-SQL (Yang et al., 2023): answer a natural-language question about a Spider database
    by issuing SQL to a real MySQL-compatible server, then ``submit``. Observations and reward are
    InterCode's; the server is started for you, and the agent can neither change the data nor hang.

    ## Spaces
    Observation: text -- the question at reset, then ``str(rows)`` of the last statement
    (a list of tuples, as InterCode shows it), ``Error executing query: <msg>``, or ``None`` for a
    statement without a result set. Action: one SQL statement, or ``submit`` (anything starting with
    "submit"), or ``skip``.

    ## Rewards
    0 until ``submit``; then InterCode's reward of the last result against the gold result: multiset
    IoU of stringified rows times Kendall's tau over the shared rows (rounded to 2 decimals), which
    can be negative. ``info["reward_parts"]`` has the unscaled IoU and tau.

    ## Episode End
    Terminated on ``submit``/``skip``; truncated after ``max_turns`` (default 10) with reward 0.

    ## Safety
    Agent SQL runs as a read-only account (SELECT/SHOW VIEW on the Spider databases), one
    statement per action, with a per-statement time limit (``time_limit_s``, default 5) and a cap on
    returned rows (``row_cap``, default 10,000; ``info["truncated_rows"]``). Refused statements
    produce an ``Error executing query: ...`` observation. Gold queries run on the episode's connection as InterCode does (see ``gold_result``).

    ## Arguments
    ``backend`` ("local", "url", "docker" or None = first that works), ``server`` (a mysql:// URL),
    ``max_turns``, ``time_limit_s``, ``row_cap``, ``mysql8_compat`` (default True: MariaDB error
    messages and DESCRIBE types shown as MySQL 8 shows them, see ``compat.py``), ``describe_types``
    (``"bytes"``, the default, as InterCode's GPT-4 recordings show DESCRIBE's type column, or
    ``"str"`` as its GPT-3.5 recordings do: it depended on the client library), ``kendall_tau``
    (default True: InterCode's code; False reproduces the reward as its published GPT-4/3.5
    recordings were scored, i.e. IoU without the tau factor).

    ## Version History
    * v0: initial release (InterCode @ c3e46d8 semantics, Spider dev tasks).
    """

    env_name = "intercode-sql"
    splits = ("dev", "train", "test")

    def __init__(self, backend: str | None = None, server: str | None = None, max_turns: int = 10,
                 time_limit_s: float = 5.0, row_cap: int = 10_000, mysql8_compat: bool = True,
                 kendall_tau: bool = True, describe_types: str = "bytes", render_mode: str | None = None) -> None:
        if describe_types not in compat.DESCRIBE_TYPES:
            raise ValueError(f"intercode-sql: describe_types must be one of {compat.DESCRIBE_TYPES}, got {describe_types!r}")
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        self.mysql8_compat = mysql8_compat
        self.describe_types = describe_types
        self.kendall_tau = kendall_tau
        self.shared = _Shared.get(backend, server)
        self.time_limit_s = float(time_limit_s)
        self.row_cap = int(row_cap)
        self._cnx = None
        self._state: SqlState | None = None
        self._gold_cache: dict[tuple, Any] = {}
        self._cnx_serial = 0  # which connection the cached gold results were computed on

    # --- tasks -------------------------------------------------------------------------
    def task_ids(self, split: str) -> list[str]:
        self._check_split(split)
        tasks = self.shared.tasks
        if split == "dev":
            return [str(t.index) for t in tasks]
        dbs = self.shared.splits[split]
        return [str(t.index) for t in tasks if t.db in dbs]

    def task(self, task_id: str | int) -> SqlTask:
        try:
            idx = int(task_id)
            if idx < 0:
                raise IndexError
            return self.shared.tasks[idx]
        except (ValueError, IndexError):
            raise TaskNotFoundError(f"intercode-sql: no task {task_id!r} (ids 0..{len(self.shared.tasks) - 1})") from None

    def warm_caches(self) -> None:
        self.shared.ensure_server()

    # --- connection ----------------------------------------------------------------------
    def _connection(self):
        if self._cnx is None or not self._cnx.is_connected():
            info = self.shared.ensure_server()
            self._cnx_serial += 1
            try:
                self._cnx = connect(info.agent_args(), connection_timeout=10)
            except Exception as e:  # noqa: BLE001
                raise ServerUnavailableError(f"intercode-sql: cannot connect as the agent account: {e}") from e
            self._session_limits()
        return self._cnx

    def _session_limits(self) -> None:
        cur = self._cnx.cursor()
        if self.shared.info.flavor == "mariadb":
            cur.execute(f"SET SESSION max_statement_time = {self.time_limit_s:.3f}")
            # One statement, one result on every connection: in-memory (HEAP) temporary tables hand
            # filesort row references that are memory addresses, so rows tied on the sort key
            # (GROUP BY ... ORDER BY count(*) LIMIT 1) came back in a per-connection order. On-disk
            # (Aria) temporary tables reference rows by file offset, the same everywhere.
            cur.execute("SET SESSION tmp_memory_table_size = 0")
        else:
            cur.execute(f"SET SESSION max_execution_time = {int(self.time_limit_s * 1000)}")
        cur.execute(f"SET SESSION sql_select_limit = {self.row_cap + 1}")
        cur.close()

    def _use(self, db: str) -> None:
        cur = self._connection().cursor()
        try:
            cur.execute(f"USE `{db}`")
        finally:
            cur.close()

    def _execute(self, sql: str) -> tuple[Any, bool]:
        """Run one agent statement; returns (InterCode observation, executed ok)."""
        refusal = check_statement(sql)
        if refusal is not None:
            return f"Error executing query: {refusal}", False
        cnx = self._connection()
        cur = cnx.cursor()
        try:
            cur.execute(sql)
            obs = cur.fetchall() if cur.with_rows else None
            if self.mysql8_compat and obs and self.shared.info.flavor == "mariadb" and compat.is_schema_listing(sql):
                obs = compat.mysql8_schema_rows(obs, self.describe_types)
            if sql.strip().split(None, 1)[0].upper() == "USE":
                self._state.db = cnx.database or self._state.db
            return obs, True
        except Exception as err:  # noqa: BLE001
            msg = getattr(err, "msg", None) or str(err)
            if self.mysql8_compat and self.shared.info.flavor == "mariadb":
                msg = compat.mysql8_error(msg)
            if not cnx.is_connected():
                self._cnx = None
                self._connection()
                self._use(self._state.db)
            return f"Error executing query: {msg}", False
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass

    # --- gymnasium API -------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        task_id = self._task_from_options(options)
        if task_id is None:
            task_id = str(self.np_random.integers(len(self.shared.tasks)))
        task = self.task(task_id)
        cnx = self._connection()
        try:
            cnx.cmd_reset_connection()  # drop user variables etc. of the previous episode
            self._session_limits()
        except Exception:  # noqa: BLE001
            self._cnx = None
            self._connection()
        self._state = SqlState(task_id=str(task.index), db=task.db, observation=task.query)
        self._use(task.db)
        return self.observation, self._info(action_valid=True)

    def step(self, action: str):
        s = self._require_state()
        if s.done or s.turn >= self.max_turns:
            raise RuntimeError("intercode-sql: episode is over; call reset()")
        action = action if isinstance(action, str) else str(action)
        s.turn += 1
        s.actions.append(action)
        valid = True
        if action.strip().lower() == "skip":
            s.done, s.reward = True, 0.0
        elif action.startswith("submit"):
            s.reward, s.reward_parts = self.evaluate()
            s.done = True
        else:
            obs, valid = self._execute(action)
            s.truncated_rows = isinstance(obs, list) and len(obs) > self.row_cap
            s.observation = obs[: self.row_cap] if s.truncated_rows else obs
        terminated = s.done
        truncated = not terminated and s.turn >= self.max_turns
        reward = float(s.reward) if terminated else 0.0
        return self.observation, reward, terminated, truncated, self._info(action_valid=valid)

    def gold_result(self, task: SqlTask) -> Any:
        """The gold query's result (rows, or the error message), run as InterCode does on the
        episode's own connection: MariaDB may order tied rows (``GROUP BY ... ORDER BY count(*)
        LIMIT 1``) differently on another connection, but not within one. The agent cannot
        influence it: its account is read-only and SET statements are refused."""
        key = (self._cnx_serial, task.index)
        if key not in self._gold_cache:
            cur = self._connection().cursor()
            try:
                cur.execute(f"USE `{task.db}`")
                cur.execute(task.gold)
                result = cur.fetchall() if cur.with_rows else []
            except Exception as err:  # noqa: BLE001 - broken gold SQL exists in Spider
                result = f"Error executing query: {getattr(err, 'msg', err)}"
            finally:
                cur.close()
            if self._state is not None:
                self._use(self._state.db)
            if len(self._gold_cache) > 4096:
                self._gold_cache.clear()
            self._gold_cache[key] = result
        return self._gold_cache[key]

    def evaluate(self) -> tuple[float, dict]:
        """The reward ``submit`` would give now (InterCode's per-turn evaluation), no side effects."""
        s = self._require_state()
        gold = self.gold_result(self.task(s.task_id))
        reward, parts = sql_reward(s.observation, gold, kendall_tau=self.kendall_tau)
        parts["gold_error"] = gold if isinstance(gold, str) else None
        return reward, parts

    @property
    def observation(self) -> str:
        s = self._require_state()
        return s.observation if isinstance(s.observation, str) else str(s.observation)

    def _info(self, action_valid: bool) -> dict:
        s = self._require_state()
        task = self.task(s.task_id)
        info = {"task_id": s.task_id, "task_type": task.hardness, "instruction": task.query,
                "admissible_actions": None, "won": bool(s.done and s.reward == 1.0), "action_valid": action_valid,
                "turn": s.turn, "db": task.db, "truncated_rows": s.truncated_rows}
        if s.done:
            info["reward_parts"] = dict(s.reward_parts or {})
        return info

    def _require_state(self) -> SqlState:
        if self._state is None:
            raise RuntimeError("intercode-sql: call reset() before step()")
        return self._state

    # --- snapshots -----------------------------------------------------------------------
    def get_state(self) -> SqlState:
        return self._require_state().copy()

    def set_state(self, state: SqlState) -> None:
        if not isinstance(state, SqlState):
            raise TypeError(f"intercode-sql: set_state expects a SqlState, got {type(state).__name__}")
        self.task(state.task_id)
        self._state = state.copy()
        self._use(state.db)

    def close(self) -> None:
        if self._cnx is not None:
            try:
                self._cnx.close()
            except Exception:  # noqa: BLE001
                pass
            self._cnx = None
