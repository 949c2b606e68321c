"""InterCode-SQL as a Gymnasium env on a real MySQL-compatible server, safe against the agent."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlparse

from hpl_envs.core import ActionResult, EpisodeState, HplTextEnv, TaskNotFoundError
from hpl_envs.data import DataCorruptError, require
from hpl_envs.intercode_sql import compat
from hpl_envs.intercode_sql.reward import sql_reward
from hpl_envs.intercode_sql.servers import ServerInfo, connect, dump_databases, make_server
from hpl_envs.intercode_sql.session import SqlSession, StatementError

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
class SqlState(EpisodeState):
    db: str  # the database the agent connection uses (USE can change it)
    observation: Any = None  # InterCode's last observation: rows, an error string, or None
    reward: float = 0.0
    reward_parts: dict | None = None
    actions: list[str] = field(default_factory=list)
    truncated_rows: bool = False
    truncated_bytes: bool = False  # the last result was cut at the env's byte cap (the observation says so)

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


MAX_STATEMENT_BYTES = 32_768  # the longest recorded InterCode action is ~1 kB; the checker is linear in this
# MariaDB's lexer, reduced to what the checks need: comments (``-- `` needs a space after it), quoted strings
# and identifiers (backslash escapes, doubled quotes; unterminated ones run to the end), everything else.
_LEXEME = re.compile(r"""/\*(?:[^*]|\*(?!/))*(?:\*/)?|\#[^\n]*|--(?=[\s\x00-\x1f]|\Z)[^\n]*"""
                     r"""|'(?:[^'\\]|\\.|'')*'?|"(?:[^"\\]|\\.|"")*"?|`(?:[^`]|``)*`?|[^/#'"`-]+|.""", re.DOTALL)
_FIRST_WORD = re.compile(r"[\s(]*(\w+)")
# Executable comments (``/*! ... */``, ``/*M! ... */``) and optimizer hints (``/*+ ... */``, MySQL runs
# e.g. MAX_EXECUTION_TIME from them) are code the server runs: refused rather than second-guessed.
_EXECUTABLE_COMMENT = re.compile(r"/\*(?:M?!|\+)", re.IGNORECASE)
_REFUSALS = [  # (pattern on _code_view(sql) and on sql, reason)
    (re.compile(r"\bINTO\s*(?:OUTFILE|DUMPFILE|@)", re.IGNORECASE), "SELECT ... INTO is not allowed"),
    (re.compile(r"\b(?:GET_LOCK|IS_FREE_LOCK|IS_USED_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS)\b", re.IGNORECASE),
     "user-level locks are not allowed (they are shared between episodes)"),
    (re.compile(r"\bPROCESSLIST\b|\bSHOW\s+(?:EXPLAIN|ANALYZE)\b|\bFOR\s+CONNECTION\b", re.IGNORECASE),
     "process lists are not allowed (they show other episodes)"),
    (re.compile(r":=|\b(?:LAST_INSERT_ID|FOUND_ROWS|ROW_COUNT|WARNING_COUNT|ERROR_COUNT)\b"
                r"|\bSHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s*)?(?:WARNINGS|ERRORS)\b", re.IGNORECASE),
     "session state (user variables, warnings, last statement counts) is not allowed: snapshots cannot keep it"),
]


def _code_view(sql: str) -> tuple[str, bool]:
    """``sql`` as the server's parser sees its code: comments become a space, single-quoted strings empty
    quotes (double-quoted ones stay: they name things under ANSI_QUOTES). Second value: it contains an
    executable comment or hint. Linear time."""
    out, executable = [], False
    for m in _LEXEME.finditer(sql):
        lexeme = m.group()
        head = lexeme[0]
        if head == "/" and lexeme.startswith("/*") or head == "#" or lexeme.startswith("--"):
            executable = executable or bool(_EXECUTABLE_COMMENT.match(lexeme))
            out.append(" ")
        elif head == "'":  # a string: its content is data (quoted identifiers stay: they name things)
            out.append("''")
        else:
            out.append(lexeme)
    return "".join(out), executable


def check_statement(sql: str, max_bytes: int = MAX_STATEMENT_BYTES) -> str | None:
    """None if ``sql`` is one allowed statement, else the reason it is refused. Never raises, and runs in
    time linear in ``len(sql)`` (bounded by ``max_bytes``)."""
    if len(sql) > max_bytes or len(sql.encode("utf-8", "surrogatepass")) > max_bytes:
        return f"statement too long (over {max_bytes:,} bytes)"
    try:
        code, executable = _code_view(sql)
        if executable or _EXECUTABLE_COMMENT.search(sql):
            return "executable comments (/*! ... */, /*M! ... */, /*+ ... */) are not allowed"
        statements = [s for s in sqlparse.split(sql) if s.strip().rstrip(";").strip()]
        if len(statements) != 1 or len([c for c in code.split(";") if c.strip()]) > 1:
            return "empty statement" if not statements else "multiple statements are not allowed"
        # the lexer alone (no grouping: sqlparse's grouping raises on deep nesting or many tokens)
        first = next((value for ttype, value in sqlparse.lexer.tokenize(statements[0])
                      if ttype not in sqlparse.tokens.Whitespace and ttype not in sqlparse.tokens.Comment
                      and value != "("), None)
    except Exception as e:  # noqa: BLE001 - agent text must never raise out of step()
        return f"statement could not be checked ({type(e).__name__})"
    word = first.upper() if first is not None else ""
    code_word = _FIRST_WORD.match(code)  # the server's first word, in case sqlparse lexed differently
    for w in (word, code_word.group(1).upper() if code_word else word):
        if w not in ALLOWED_FIRST_WORDS:
            return f"{w or 'this'} statements are not allowed"
    for pattern, reason in _REFUSALS:  # on the raw text too: a server may lex strings differently
        if pattern.search(code) or pattern.search(sql):  # (NO_BACKSLASH_ESCAPES); refusing more is safe
            return reason
    return None


class _Shared:
    """Tasks, the server and cached gold results: once per process."""

    _cache: dict[tuple, _Shared] = {}
    _lock = threading.Lock()

    def __init__(self, backend: str | None, server: str | None, image: str | None = None) -> None:
        self.tasks = load_tasks(require("intercode_sql/ic_spider_dev.json", "intercode-sql"))
        self.dump = require("intercode_sql/ic_spider_dbs.sql", "intercode-sql")
        self.splits = database_split(self.tasks)
        missing = {t.db.lower() for t in self.tasks} - {d.lower() for d in dump_databases(self.dump)}
        if missing:  # a truncated dump would load "fine" and fail episodes later with "Access denied"
            raise DataCorruptError(f"{self.dump}: no database {', '.join(sorted(missing)[:5])} that tasks use "
                                   "(truncated or not InterCode's dump; `hpl-data download intercode-sql`)")
        self.server = make_server(backend, self.dump, server, image)
        self.info: ServerInfo | None = None
        self._holders: weakref.WeakSet = weakref.WeakSet()  # the open envs that use the server
        self._server_lock = threading.RLock()

    @classmethod
    def get(cls, backend: str | None, server: str | None, image: str | None = None) -> _Shared:
        key = (backend, server, image)
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(backend, server, image)
            return cls._cache[key]

    def ensure_server(self, holder: object | None = None) -> ServerInfo:
        """The server, started or joined if needed; ``holder`` (an env) keeps it until it lets go."""
        with self._server_lock:
            if holder is not None:
                self._holders.add(holder)
            if self.info is None:
                self.info = self.server.acquire()
            return self.info

    def let_go(self, holder: object) -> None:
        """``holder`` is closed: when no open env of this process uses a local server any more,
        release it (the last process to release it stops it), so that close() leaves no server
        process behind. A later env starts or joins one again."""
        with self._server_lock:
            self._holders.discard(holder)
            if not self._holders and self.info is not None and self.server.release_when_idle:
                self.info = None
                self.server.release()


class InterCodeSqlEnv(HplTextEnv):
    """
    Answer a natural-language question about a Spider database with SQL, then submit.

    ## Description
    InterCode-SQL (Yang et al., 2023): the agent issues SQL to a real MySQL-compatible server
    (started for you: a local MariaDB, a URL, or Docker) and submits when its last result answers
    the question. Observations and reward are InterCode's (@ c3e46d8); the agent can neither change
    the data nor hang the server (see Safety). A task is one Spider dev question, id = its index.

    ## Action Space
    A string (``FreeText``): one SQL statement (it may span lines), ``submit`` (any action starting
    with ``submit``: score the last result) or ``skip`` (give up, reward 0). There is no list of
    admissible actions. A refused or failing statement gives an ``Error executing query: ...``
    observation and ``info["action_valid"] = False``.

    ## Observation Space
    A string: ``str(rows)`` of the last statement's result (a list of tuples, as InterCode shows it;
    at most ``row_cap`` rows, then ``info["truncated_rows"]``), ``Error executing query: <msg>``, or
    ``None`` for a statement without a result set. A result over ``result_byte_cap`` is cut and the
    observation ends with ``[result truncated: ...]`` (``info["truncated_bytes"]``). ``submit`` and
    ``skip`` leave the observation as it was.

    ## Starting State
    The observation is the question; the agent's session is fresh (no session state) in the task's
    database. ``reset(options={"task_id": "17"})`` picks task 17; ``reset(seed=...)`` without one
    draws a task uniformly from all tasks with the env's ``np_random``. ``task_ids(split)``: ``dev``
    (all Spider dev tasks, InterCode's set), ``train``/``test`` (by database: ordered by a hash of
    its name, test takes databases until it holds 30% of the tasks; no database in both).

    ## Rewards
    0 on every step until ``submit``; then InterCode's reward of the last result against the gold
    query's result: multiset IoU of stringified rows times Kendall's tau over the shared rows
    (rounded to 2 decimals), in [-1, 1]; with ``kendall_tau=False`` the IoU alone, in [0, 1]. A
    failing gold query scores as an empty result. ``skip``: 0.

    ## Episode End
    - Termination: ``submit`` or ``skip``.
    - Truncation: ``max_turns`` actions (default 10) without either; reward 0.

    After either, ``step`` raises ``RuntimeError("intercode-sql: episode is over; call reset()")``.

    ## Information
    Common keys (every hpl env, after ``reset`` and every ``step``):

    - ``task_id`` (str): the task's index (canonical: ``"007"`` becomes ``"7"``).
    - ``task_type`` (str): Spider's hardness (``easy``, ``medium``, ``hard``, ``extra``).
    - ``instruction`` (str): the question.
    - ``admissible_actions`` (None): any text may be an action.
    - ``won`` (bool): reward == 1.0 (only on the ``submit`` step).
    - ``action_valid`` (bool): the statement ran without error (True for ``submit``/``skip`` and
      after reset).
    - ``turn`` (int): actions taken.

    InterCode-SQL's own keys:

    - ``db`` (str): the task's database.
    - ``truncated_rows`` (bool): the last result had more than ``row_cap`` rows (the rest are dropped).
    - ``truncated_bytes`` (bool): the last result was cut at ``result_byte_cap``.
    - ``reward_parts`` (dict, after ``submit``/``skip``): ``iou`` (float), ``kendall_tau`` (float
      or None: no tau applied) and ``gold_error`` (the gold query's error message, or None); empty
      after ``skip``.

    ## Safety
    Agent SQL runs as a read-only account (SELECT/SHOW VIEW on the Spider databases), one
    statement per action, with a per-statement time limit (``time_limit_s``) and caps on returned
    rows (``row_cap``) and result size (``result_byte_cap``, read row by row so memory stays
    bounded). Statements over ``max_statement_bytes``, executable comments (``/*! */``, ``/*M! */``,
    hints ``/*+ */``), user-level locks, process lists and statements that leave session state (user
    variables, warnings) are refused; a client-side deadline kills any statement the server let run
    past the limit. Gold queries run on the episode's connection as InterCode does (see
    ``gold_result``).

    ## Arguments
    ```python
    import gymnasium as gym
    import hpl_envs  # registers the ids
    gym.make("hpl/InterCodeSQL-v0", backend="local", max_turns=10)
    # or: hpl_envs.make_env("intercode-sql", ...); hpl-eval / hpl-gen: --env-arg backend='"docker"'
    ```

    - ``backend=None``: ``"local"`` (a MariaDB/MySQL server binary here, started for you),
      ``"url"`` (an existing server at ``url``), ``"docker"`` (a container, ``pip install
      'hpl[docker]'``), or None: ``url`` if given, else local, else docker (the error lists why
      each failed).
    - ``url=None``: a ``mysql://user:pass@host:port`` URL of a server holding InterCode's databases.
    - ``server=None``: the older name of ``url``.
    - ``image=None``: docker's base image (default the offline MariaDB one; e.g. ``mysql:8.0`` where
      a registry answers).
    - ``max_turns=10``: actions before truncation (the registry's default, the HPL paper's).
    - ``time_limit_s=5.0``: per-statement time limit (server-side, plus a client-side deadline).
    - ``row_cap=10_000``: rows kept of a result.
    - ``mysql8_compat=True``: MariaDB error messages and DESCRIBE types shown as MySQL 8 shows them
      (``compat.py``), as InterCode's recordings were made on MySQL 8.
    - ``kendall_tau=True``: InterCode's code (IoU times tau); False reproduces the reward its
      published GPT-4/3.5 recordings were scored with (IoU alone).
    - ``describe_types="bytes"``: DESCRIBE's type column as bytes (InterCode's GPT-4 recordings) or
      ``"str"`` (its GPT-3.5 recordings; it depended on the client library).
    - ``render_mode=None``: ``"ansi"`` makes ``render()`` return the observation.
    - ``result_byte_cap=4_000_000``: observation text kept of one result, in bytes.
    - ``max_statement_bytes=32_768``: longer statements are refused.

    ## Version History
    * v0: initial release (InterCode @ c3e46d8 semantics, Spider dev tasks).
    """

    env_name = "intercode-sql"
    splits = ("dev", "train", "test")
    state_type = SqlState
    _state: SqlState | None

    def __init__(self, backend: str | None = None, server: str | None = None, url: str | None = None,
                 image: str | None = None, max_turns: int = 10,
                 time_limit_s: float = 5.0, row_cap: int = 10_000, mysql8_compat: bool = True,
                 kendall_tau: bool = True, describe_types: str = "bytes", render_mode: str | None = None,
                 result_byte_cap: int = 4_000_000, max_statement_bytes: int = MAX_STATEMENT_BYTES) -> None:
        if describe_types not in compat.DESCRIBE_TYPES:
            raise ValueError(f"intercode-sql: describe_types must be one of {compat.DESCRIBE_TYPES}, got {describe_types!r}")
        super().__init__(max_turns=max_turns, render_mode=render_mode)
        self.mysql8_compat = mysql8_compat
        self.describe_types = describe_types
        self.kendall_tau = kendall_tau
        self.shared = _Shared.get(backend, server or url, image)
        self.time_limit_s = float(time_limit_s)
        self.row_cap = int(row_cap)
        self.result_byte_cap = int(result_byte_cap)
        self.max_statement_bytes = int(max_statement_bytes)
        self.session = SqlSession(self._server_info, time_limit_s=self.time_limit_s, row_cap=self.row_cap,
                                  result_byte_cap=self.result_byte_cap)
        self._gold_cache: dict[tuple, Any] = {}  # (session connection serial, task index) -> gold result

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

    def task_type(self, task_id: str) -> str:
        return self.task(task_id).hardness

    def instruction(self, task_id: str) -> str:
        return self.task(task_id).query

    def _default_task_ids(self) -> range:
        return range(len(self.shared.tasks))

    def warm_caches(self) -> None:
        self.shared.ensure_server(self)

    def _server_info(self) -> ServerInfo:
        """The server (started or joined if needed); this env holds it until close()."""
        return self.shared.ensure_server(self)

    def _shown_as_mysql8(self) -> bool:
        """Whether MariaDB's messages and DESCRIBE types are rewritten as MySQL 8 shows them."""
        return self.mysql8_compat and self.shared.info.flavor == "mariadb"

    def _execute(self, sql: str) -> tuple[Any, bool]:
        """Run one agent statement; returns (InterCode observation, executed ok). Refused statements
        never reach the server; the session bounds time and result size (``SqlState.truncated_bytes``)."""
        self._state.truncated_bytes = False
        refusal = check_statement(sql, self.max_statement_bytes)
        if refusal is not None:
            return f"Error executing query: {refusal}", False
        try:
            result = self.session.execute(sql)
        except StatementError as err:
            msg = compat.mysql8_error(err.msg) if self._shown_as_mysql8() else err.msg
            return f"Error executing query: {msg}", False
        self._state.truncated_bytes = result.truncated_bytes
        self._state.db = self.session.database or self._state.db
        obs = result.rows
        if obs and not result.wire_cut and self._shown_as_mysql8() and compat.is_schema_listing(sql):
            obs = compat.mysql8_schema_rows(obs, self.describe_types)
        return obs, True

    # --- the episode (HplTextEnv's hooks) -------------------------------------------------
    def _reset_task(self, task_id: str) -> SqlState:
        task = self.task(task_id)
        self.session.fresh(task.db)
        return SqlState(task_id=str(task.index), db=task.db, observation=task.query)

    def _apply_action(self, action: str) -> ActionResult:
        s = self._state
        s.actions.append(action)
        if action.strip().lower() == "skip":
            s.reward = 0.0
            return ActionResult(reward=0.0, terminated=True, action_valid=True)
        if action.startswith("submit"):
            s.reward, s.reward_parts = self.evaluate()
            return ActionResult(reward=s.reward, terminated=True, action_valid=True, won=bool(s.reward == 1.0))
        obs, valid = self._execute(action)
        s.truncated_rows = isinstance(obs, list) and len(obs) > self.row_cap
        s.observation = obs[: self.row_cap] if s.truncated_rows else obs
        return ActionResult(reward=0.0, terminated=False, action_valid=valid)

    def gold_result(self, task: SqlTask) -> Any:
        """The gold query's result (rows, or the error message), run as InterCode does on the
        episode's own connection: MariaDB may order tied rows (``GROUP BY ... ORDER BY count(*)
        LIMIT 1``) differently on another connection, but not within one. The agent cannot
        influence it: its account is read-only and SET statements are refused."""
        key = (self.session.serial, task.index)
        if key not in self._gold_cache:
            result = self.session.run_trusted(task.db, task.gold)
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
        if isinstance(s.observation, str):
            return s.observation
        if s.truncated_bytes:
            return (f"{s.observation}\n[result truncated: only the first {len(s.observation)} rows are shown, "
                    f"the result is larger than {self.result_byte_cap:,} bytes]")
        return str(s.observation)

    def _extra_info(self) -> dict[str, Any]:
        s = self._state
        info = {"db": self.task(s.task_id).db, "truncated_rows": s.truncated_rows, "truncated_bytes": s.truncated_bytes}
        if s.done:
            info["reward_parts"] = dict(s.reward_parts or {})
        return info

    # --- snapshots -----------------------------------------------------------------------
    def _restore(self, state: SqlState) -> None:
        self.task(state.task_id)
        super()._restore(state)
        self.session.fresh(state.db)

    def close(self) -> None:
        self.session.close()
        self.shared.let_go(self)

    # --- protocol fingerprint ----------------------------------------------------------
    def protocol_parts(self, task_ids: list[str]) -> dict[str, Any]:
        """What an InterCode-SQL result depends on beyond the code: the task and database files, the
        database split, the reward options and the SQL server that executes the queries."""
        from hpl_envs.data import file_digest

        info = self.shared.ensure_server(self)
        cnx = connect(info.admin_args(), connection_timeout=10)
        try:
            cur = cnx.cursor()
            cur.execute("SELECT VERSION(), @@version_comment")
            server_version, comment = cur.fetchone()
            cur.close()
        finally:
            cnx.close()
        return {
            "data_files": {"ic_spider_dev.json": file_digest([require("intercode_sql/ic_spider_dev.json", "intercode-sql")]),
                           "ic_spider_dbs.sql": file_digest([self.shared.dump])},
            "split_definition": "dev: all Spider dev tasks; train/test: databases by sha256(name), test until 30% of tasks",
            "reward_options": {"kendall_tau": self.kendall_tau, "mysql8_compat": self.mysql8_compat},
            "time_limit_s": self.time_limit_s,
            "row_cap": self.row_cap,
            "sql_server": {"product": info.flavor, "version": str(server_version), "comment": str(comment),
                           "backend": info.backend},
        }
