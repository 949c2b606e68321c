"""The agent's connection to the SQL server: session limits, bounded execution, and a kill.

:class:`SqlSession` holds one connection of the read-only agent account and runs statements on it
so that no statement can hold the caller longer than its time limit (the server's own limit, plus a
:class:`_Watchdog` that issues ``KILL QUERY`` from a second connection) or make it keep more than
``result_byte_cap`` bytes of result (rows are streamed and counted; the bytes read off the wire are
capped too). It knows nothing of tasks, rewards or InterCode's observation format: the env
(:class:`~hpl_envs.intercode_sql.env.InterCodeSqlEnv`) decides what may run and how results look.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from hpl_envs.intercode_sql.servers import ServerInfo, ServerUnavailableError, connect

DEADLINE_GRACE_S = 1.0  # the client kills a statement this long after the server should have
WIRE_ALLOWANCE_BYTES = 16 << 20  # bytes read beyond result_byte_cap (one full protocol packet)
FETCH_BATCH_ROWS = 256
OBSERVATION_CHARS_PER_WIRE_BYTE = 8  # str(rows) is at most ~7 characters per byte received (NULL: "None, ")
_USE_WORD = re.compile(r"\bUSE\b", re.IGNORECASE)


class StatementError(Exception):
    """The server failed or refused the statement; ``msg`` is its message (the session is usable again)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


@dataclass
class StatementResult:
    rows: list | None  # the result set (possibly cut), or None for a statement without one
    truncated_bytes: bool = False  # cut at result_byte_cap
    wire_cut: bool = False  # cut mid-packet at the wire budget (the connection was dropped)


class _Watchdog:
    """Kills one running statement at a deadline unless cancelled first (the server-side limit is the
    first line; this one holds even if a statement escaped it)."""

    def __init__(self, session: SqlSession, connection_id: int, seconds: float) -> None:
        self.session, self.connection_id = session, connection_id
        self.lock, self.done = threading.Lock(), False
        self.timer = threading.Timer(seconds, self.kill_now)
        self.timer.daemon = True
        self.timer.start()

    def kill_now(self) -> None:
        with self.lock:
            if not self.done:
                self.done = True
                self.session.kill_query(self.connection_id)

    def cancel(self) -> None:
        self.timer.cancel()
        with self.lock:
            self.done = True


class _ResultTooLarge(Exception):
    """The server sent more bytes for one statement than the session keeps (a row can be gigabytes)."""


@dataclass
class _WireCounter:
    read: int = 0  # bytes the connection has read for the current statement


@contextlib.contextmanager
def _wire_budget(cnx: Any, limit: int) -> Iterator[_WireCounter]:
    """Count the bytes the connection reads while inside; past ``limit`` raise _ResultTooLarge (the
    connection is then mid-packet and is dropped). Bounds memory where row-wise checks cannot: the
    connector reads a whole row, however many 16 MB packets it spans, before returning it."""
    sock = cnx._socket  # mysql-connector's pure-Python socket wrapper; recv() returns one packet
    read_packet, counter = sock.recv, _WireCounter()

    def counting_recv(*args: Any, **kwargs: Any) -> bytes:
        packet = read_packet(*args, **kwargs)
        counter.read += len(packet)
        if counter.read > limit:
            raise _ResultTooLarge
        return packet

    sock.recv = counting_recv
    try:
        yield counter
    finally:
        del sock.recv  # back to the class's method


class SqlSession:
    """One agent connection with its limits; reconnects (into :attr:`database`) whenever it was lost.

    ``server`` returns the running server (starting or joining it if needed); it is called for
    every new connection, so a server restarted meanwhile is found again."""

    def __init__(self, server: Callable[[], ServerInfo], *, time_limit_s: float, row_cap: int,
                 result_byte_cap: int) -> None:
        self._server = server
        self.time_limit_s = float(time_limit_s)
        self.row_cap = int(row_cap)
        self.result_byte_cap = int(result_byte_cap)
        self.database: str | None = None  # where the session is (USE statements move it)
        self.serial = 0  # counts connections: results cached per connection are keyed by it
        self._cnx: Any = None

    # --- the connection ----------------------------------------------------------------------
    def connection(self) -> Any:
        """The live connection; if there is none (or it was lost), a new one with the session
        limits, in the session's database."""
        if self._cnx is None or not self._cnx.is_connected():
            info = self._server()
            self.serial += 1
            try:
                self._cnx = connect(info.agent_args(), connection_timeout=10)
            except Exception as e:  # noqa: BLE001
                raise ServerUnavailableError(f"intercode-sql: cannot connect as the agent account: {e}") from e
            self._apply_limits(info.flavor)
            if self.database:
                self.use(self.database)
        return self._cnx

    def _apply_limits(self, flavor: str) -> None:
        cur = self._cnx.cursor()
        if flavor == "mariadb":
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

    def fresh(self, database: str | None) -> None:
        """The connection as a new one would be (no user variables or other session state of
        earlier statements), limits applied, in ``database``. Snapshots hold only the database:
        the env refuses statements that would leave other session state."""
        cnx = self.connection()
        try:
            cnx.cmd_reset_connection()
            self._apply_limits(self._server().flavor)
        except Exception:  # noqa: BLE001
            self._cnx = None
            self.connection()
        if database:
            self.use(database)

    def use(self, database: str) -> None:
        cur = self.connection().cursor()
        try:
            cur.execute(f"USE `{database}`")
        finally:
            cur.close()
        self.database = database

    def close(self) -> None:
        if self._cnx is not None:
            with contextlib.suppress(Exception):
                self._cnx.close()
            self._cnx = None

    def _drop_connection(self) -> None:
        """Forget a connection in an unknown state and open a new one in the session's database."""
        cnx, self._cnx = self._cnx, None
        with contextlib.suppress(Exception):
            cnx.shutdown()
        self._reconnect()

    def _reconnect(self) -> None:
        self._cnx = None
        self.connection()

    def kill_query(self, connection_id: int) -> None:
        """KILL QUERY from a second connection of the same account (allowed on its own threads)."""
        try:
            killer = connect(self._server().agent_args(), connection_timeout=5)
            try:
                killer.cursor().execute(f"KILL QUERY {int(connection_id)}")
            finally:
                killer.close()
        except Exception:  # noqa: BLE001 - the statement may have ended meanwhile
            pass

    # --- statements ---------------------------------------------------------------------------
    def execute(self, sql: str) -> StatementResult:
        """Run one statement within the limits. Rows are streamed and kept only up to
        ``result_byte_cap``; a client-side deadline kills the statement from a second connection
        should the server's own limit not stop it. A failing statement raises StatementError."""
        cnx = self.connection()
        cur = cnx.cursor(buffered=False)
        watchdog = _Watchdog(self, cnx.connection_id, self.time_limit_s + DEADLINE_GRACE_S)
        result = StatementResult(rows=[])
        try:
            try:
                with _wire_budget(cnx, self.result_byte_cap + WIRE_ALLOWANCE_BYTES) as wire:
                    cur.execute(sql)
                    result.rows = self._fetch_bounded(cnx, watchdog, result, wire) if cur.with_rows else None
            except _ResultTooLarge:
                result.truncated_bytes = result.wire_cut = True
                self._drop_connection()
                return result
            if _USE_WORD.search(sql):  # USE, however commented: ask the server where the session now is
                self.database = self.connection().database or self.database
            return result
        except Exception as err:  # noqa: BLE001
            if not cnx.is_connected():
                self._reconnect()
            raise StatementError(getattr(err, "msg", None) or str(err)) from err
        finally:
            watchdog.cancel()
            with contextlib.suppress(Exception):
                cur.close()

    def _fetch_bounded(self, cnx: Any, watchdog: _Watchdog, result: StatementResult, wire: _WireCounter) -> list:
        """Rows in batches into ``result.rows`` until ``result_byte_cap`` bytes of observation text;
        then the statement is killed and the rest of its result read and dropped (within the wire
        budget). Rows are measured only once the result could be near the cap (a str() each)."""
        rows, used = result.rows, None
        while cnx.unread_result:
            batch, _ = cnx.get_rows(count=FETCH_BATCH_ROWS)
            if used is None:
                if OBSERVATION_CHARS_PER_WIRE_BYTE * wire.read < self.result_byte_cap:
                    rows.extend(batch)
                    continue
                used = len(str(rows))
            for i, row in enumerate(batch):
                cheap = sum(len(v) for v in row if isinstance(v, (str, bytes, bytearray)))
                size = cheap + 2 if cheap > self.result_byte_cap else len(str(row)) + 2
                if used + size > self.result_byte_cap:
                    result.truncated_bytes = True
                    del batch[i:], row
                    watchdog.kill_now()
                    self._drain(cnx)
                    return rows
                rows.append(row)
                used += size
        return rows

    def _drain(self, cnx: Any) -> None:
        """Read and drop what is left of a killed result; give the connection up if that takes long."""
        deadline = time.monotonic() + DEADLINE_GRACE_S + 2
        try:
            while cnx.unread_result:
                cnx.get_rows(count=1)
                if time.monotonic() > deadline:
                    raise TimeoutError
        except _ResultTooLarge:
            raise
        except Exception:  # noqa: BLE001 - the kill ends the result with an error packet
            if cnx.unread_result or not cnx.is_connected():
                self._drop_connection()

    def run_trusted(self, database: str, sql: str) -> list | str:
        """A statement of hpl's own (a gold query) on this connection in ``database``, without the
        agent's bounds; rows, or InterCode's error observation. The session goes back to its own
        database afterwards."""
        cur = self.connection().cursor()
        try:
            cur.execute(f"USE `{database}`")
            cur.execute(sql)
            result = cur.fetchall() if cur.with_rows else []
        except Exception as err:  # noqa: BLE001 - broken gold SQL exists in Spider
            result = f"Error executing query: {getattr(err, 'msg', err)}"
        finally:
            cur.close()
        if self.database:
            self.use(self.database)
        return result
