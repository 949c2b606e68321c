"""What an InterCode-SQL server is, whichever backend provides it.

Every backend (:mod:`.local`, :mod:`.url`, :mod:`.docker`) ends in the same state: the Spider
databases, a read-only agent account (SELECT/SHOW VIEW on those databases only) and an admin account
that runs gold queries. This module holds that contract (:class:`SqlServer`, :class:`ServerInfo`),
the load of the dump that establishes it (:func:`ensure_loaded`) and the helpers the backends share;
it imports no backend, so the backends import it without a cycle.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hpl_envs.core import EnvUnavailableError

AGENT_USER = "hpl_agent"
AGENT_PASSWORD = "hpl_agent"  # read-only on the Spider databases; not a secret
AGENT_MAX_STATEMENT_TIME_S = 5  # MariaDB account default; the env sets its own limit per session on top
META_DB = "hpl_meta"
DUMP_SKIP = re.compile(r"^\s*(CREATE USER|GRANT|FLUSH PRIVILEGES)\b", re.IGNORECASE)
DB_NAME = re.compile(r"CREATE DATABASE\s+IF NOT EXISTS\s+`([^`]+)`", re.IGNORECASE)
log = logging.getLogger(__name__)


class ServerUnavailableError(EnvUnavailableError):
    """No MySQL-compatible server could be started or reached."""


@dataclass
class ServerInfo:
    host: str
    port: int
    admin_user: str
    admin_password: str
    socket: str | None = None
    backend: str = ""
    flavor: str = ""  # "mariadb" or "mysql"

    def connect_args(self, user: str, password: str) -> dict:
        args = {"user": user, "password": password, "host": self.host, "port": self.port}
        if self.socket:
            args["unix_socket"] = self.socket
        return args

    def admin_args(self) -> dict:
        return self.connect_args(self.admin_user, self.admin_password)

    def agent_args(self) -> dict:
        return self.connect_args(AGENT_USER, AGENT_PASSWORD)


def dump_databases(dump: Path) -> list[str]:
    return DB_NAME.findall(dump.read_text(encoding="utf-8"))


def connect(args: dict, **extra):
    import mysql.connector

    return mysql.connector.connect(**args, autocommit=True, use_pure=True, **extra)


def ensure_loaded(info: ServerInfo, dump: Path, digest: str) -> None:
    """Load the dump unless a marker with its checksum exists; (re)create the agent account."""
    cnx = connect(info.admin_args())
    try:
        cur = cnx.cursor()
        cur.execute("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = %s", (META_DB,))
        meta_existed = cur.fetchone()[0] > 0
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {META_DB}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {META_DB}.loaded (digest VARCHAR(64) PRIMARY KEY)")
        cur.execute(f"SELECT digest FROM {META_DB}.loaded")
        loaded = {r[0] for r in cur.fetchall()}
        dbs = dump_databases(dump)
        if digest not in loaded and not meta_existed and _databases_present(cur, dbs):
            # loaded by someone else before hpl ever touched this server (the Docker image's init
            # scripts); once hpl_meta exists only hpl's own completed load counts
            loaded.add(digest)
            cur.execute(f"INSERT INTO {META_DB}.loaded VALUES (%s)", (digest,))
        if digest not in loaded:
            if meta_existed:
                log.warning("intercode-sql: an earlier load of %s did not finish; loading it again", dump.name)
            for db in dbs:  # whatever an interrupted load left
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            _load_dump(cnx, info, dump)
            # Settle the optimizer statistics now: InnoDB recomputes them in the background after a
            # bulk load, and queries whose order depends on ties (GROUP BY ... LIMIT 1) would
            # otherwise change results mid-run.
            for db in dbs:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (db,))
                for (table,) in cur.fetchall():
                    cur.execute(f"ANALYZE TABLE `{db}`.`{table}` PERSISTENT FOR ALL"
                                if info.flavor == "mariadb" else f"ANALYZE TABLE `{db}`.`{table}`")
                    cur.fetchall()
            cur.execute(f"DELETE FROM {META_DB}.loaded")
            cur.execute(f"INSERT INTO {META_DB}.loaded VALUES (%s)", (digest,))
        for host in ("localhost", "127.0.0.1", "%"):
            cur.execute(f"CREATE USER IF NOT EXISTS '{AGENT_USER}'@'{host}' IDENTIFIED BY '{AGENT_PASSWORD}'")
            if info.flavor == "mariadb":  # a server-side limit that holds whatever the session does
                cur.execute(f"ALTER USER '{AGENT_USER}'@'{host}' WITH MAX_STATEMENT_TIME {AGENT_MAX_STATEMENT_TIME_S}")
            for db in dbs:
                cur.execute(f"GRANT SELECT, SHOW VIEW ON `{db}`.* TO '{AGENT_USER}'@'{host}'")
    finally:
        cnx.close()


def _databases_present(cur, dbs: list[str]) -> bool:
    cur.execute("SELECT table_schema, COUNT(*) FROM information_schema.tables GROUP BY table_schema")
    have = {str(k).lower(): n for k, n in cur.fetchall()}
    return all(have.get(db.lower(), 0) > 0 for db in dbs)


def _load_dump(cnx, info: ServerInfo, dump: Path) -> None:
    """Pipe the dump through the server's own client when it is here (fast), else statement-wise."""
    text = "\n".join(line for line in dump.read_text(encoding="utf-8").splitlines() if not DUMP_SKIP.match(line))
    text = "SET FOREIGN_KEY_CHECKS=0;\n" + text
    client = shutil.which("mariadb") or shutil.which("mysql")
    if client and info.socket:
        args = [client, "--no-defaults", f"--socket={info.socket}", f"--user={info.admin_user}"]
        env = dict(os.environ, MYSQL_PWD=info.admin_password)
        proc = subprocess.run(args, input=text, text=True, capture_output=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise ServerUnavailableError(f"loading {dump} failed (a truncated or damaged file? "
                                         f"`hpl-data download intercode-sql` fetches it again): "
                                         f"{proc.stderr.strip()[:2000]}")
        return
    import sqlparse

    cur = cnx.cursor()
    for stmt in sqlparse.split(text):
        if stmt.strip():
            cur.execute(stmt)
            if cur.with_rows:
                cur.fetchall()


class SqlServer:
    """A backend's server. ``acquire()`` starts it or joins a running one (idempotent) and returns
    where it answers (:class:`ServerInfo`: address, admin account, flavor) once the Spider data and
    the agent account are in place; ``release()`` gives it back (a backend that started it stops it
    when no user is left)."""

    name = ""
    # release when the process's last open env closes (True), or only at exit: a URL server has
    # nothing to release, a container is shared with the workers forked later (``SHARE_ENV``)
    release_when_idle = False

    def acquire(self) -> ServerInfo:
        raise NotImplementedError

    def release(self) -> None:
        pass


class FirstAvailableServer(SqlServer):
    """No backend chosen: the first candidate that starts wins; the error lists each one and why."""

    name = "auto"

    def __init__(self, candidates: list) -> None:
        self.candidates = candidates  # [(name, factory)]: a factory may itself raise
        self.chosen: SqlServer | None = None

    def acquire(self) -> ServerInfo:
        if self.chosen is not None:
            return self.chosen.acquire()
        reasons = []
        for name, factory in self.candidates:
            try:
                server = factory()
                info = server.acquire()
            except ServerUnavailableError as e:
                reasons.append(f"  {name}: {str(e).removeprefix('intercode-sql: ').strip()}")
                continue
            self.chosen = server
            return info
        raise ServerUnavailableError("intercode-sql: no SQL server backend works; tried:\n" + "\n".join(reasons)
                                     + "\n  (choose one with --env-arg backend=local|url|docker, url=mysql://...)")

    @property
    def release_when_idle(self) -> bool:  # type: ignore[override]
        return self.chosen is not None and self.chosen.release_when_idle

    def release(self) -> None:
        if self.chosen is not None:
            self.chosen.release()


def server_flavor(cnx) -> str:
    """``"mariadb"`` or ``"mysql"``, from the server's version string."""
    cur = cnx.cursor()
    cur.execute("SELECT VERSION()")
    return "mariadb" if "mariadb" in str(cur.fetchone()[0]).lower() else "mysql"



def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
