"""MySQL-compatible servers for InterCode-SQL, started and stopped by hpl.

Backends (one interface, :class:`SqlServer`):

* ``local`` -- hpl starts its own ``mariadbd``/``mysqld`` on 127.0.0.1 with a private datadir under
  the cache, a free port and ``lower_case_table_names=1``; the Spider dump is loaded once and reused
  while its checksum matches. Concurrent hpl processes share one server: each registers itself in
  ``clients/``; the last one to leave shuts it down (a client killed with SIGKILL is noticed and
  pruned by the next start or stop).
* ``url`` -- any server given as ``mysql://user:pass@host:port``; the data is loaded if missing.
* ``docker`` -- a container from ``docker/intercode-sql.Dockerfile`` through the ``docker`` SDK
  (``docker_backend.py``).

With no backend chosen, local then docker are tried (:class:`FirstAvailableServer`).

Every backend ends in the same state: the Spider databases, a read-only agent account
(SELECT/SHOW VIEW on those databases only) and an admin account that runs gold queries.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlparse

from hpl_envs.core import EnvUnavailableError
from hpl_envs.data import cache_dir, file_digest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
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


def find_server_binary() -> str | None:
    for name in ("mariadbd", "mysqld"):
        for d in (None, "/usr/sbin", "/usr/local/sbin", "/usr/libexec"):
            path = shutil.which(name, path=d) if d else shutil.which(name)
            if path:
                return path
    return None


class SqlServer:
    """Interface: ``acquire()`` returns a ready server, ``release()`` gives it back."""

    name = ""
    # release when the process's last open env closes (True), or only at exit: a URL server has
    # nothing to release, a container is shared with the workers forked later (``SHARE_ENV``)
    release_when_idle = False

    def acquire(self) -> ServerInfo:
        raise NotImplementedError

    def release(self) -> None:
        pass


class UrlServer(SqlServer):
    name = "url"

    def __init__(self, url: str, dump: Path) -> None:
        u = urlparse(url)
        if u.scheme not in ("mysql", "mariadb") or not u.hostname:
            raise ValueError(f"intercode-sql: server URL must look like mysql://user:pass@host:port, got {url!r}")
        self.info = ServerInfo(host=u.hostname, port=u.port or 3306, admin_user=unquote(u.username or "root"),
                               admin_password=unquote(u.password or ""), backend="url")
        self.dump = dump

    def acquire(self) -> ServerInfo:
        try:
            cnx = connect(self.info.admin_args(), connection_timeout=10)
            self.info.flavor = _flavor(cnx)
            cnx.close()
        except Exception as e:  # noqa: BLE001
            raise ServerUnavailableError(f"intercode-sql: cannot connect to {self.info.host}:{self.info.port}: {e}") from e
        ensure_loaded(self.info, self.dump, file_digest([self.dump]))
        return self.info


def _flavor(cnx) -> str:
    cur = cnx.cursor()
    cur.execute("SELECT VERSION()")
    return "mariadb" if "mariadb" in str(cur.fetchone()[0]).lower() else "mysql"


class LocalServer(SqlServer):
    """hpl's own mariadbd/mysqld, shared by the hpl processes of this machine and user."""

    name = "local"
    release_when_idle = True  # a child process of whoever started it: env.close() must not leave it running
    # (pid, base) -> LocalServer objects of this process registered on that server: clients/ holds
    # one file per process, removed when the last of them releases
    _in_process: ClassVar[Counter] = Counter()

    def __init__(self, dump: Path, binary: str | None = None, base_dir: Path | None = None) -> None:
        self.binary = binary or find_server_binary()
        if self.binary is None:
            raise ServerUnavailableError(
                "intercode-sql: no mariadbd or mysqld binary found for the 'local' backend.\n"
                "  Install one (Debian/Ubuntu: `apt-get install mariadb-server`), or pass a server URL "
                "(--env-arg server='\"mysql://user:pass@host:port\"'), or use the docker backend."
            )
        self.dump = dump
        self.digest = file_digest([dump])
        self.base = Path(base_dir) if base_dir else cache_dir() / "mariadb" / f"spider-{self.digest}"
        self.base.mkdir(parents=True, exist_ok=True)
        self.registered = False
        self._process: subprocess.Popen | None = None  # the server, when this process started it

    @contextlib.contextmanager
    def _locked(self):
        with open(self.base / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _state(self) -> dict | None:
        try:
            return json.loads((self.base / "server.json").read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _clients(self) -> list[int]:
        d = self.base / "clients"
        d.mkdir(exist_ok=True)
        live = []
        for p in d.iterdir():
            if p.name.isdigit() and _pid_alive(int(p.name)):
                live.append(int(p.name))
            else:
                p.unlink(missing_ok=True)
        return live

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def _partial_datadir(self) -> Path:
        return self.base / "data.partial"  # mariadb-install-db works here; renamed to data/ when it is done

    def _socket_path(self) -> str:
        sock = str(self.base / "mysqld.sock")
        if len(sock) > 100:  # unix socket paths are limited to 107 bytes
            tag = hashlib.sha256(str(self.base).encode()).hexdigest()[:12]
            sock = os.path.join(tempfile.gettempdir(), f"hpl-mysqld-{os.getuid()}-{tag}.sock")
        return sock

    def _tmpdir(self) -> Path:
        """The server's own temp dir: a shared /tmp let another process's cleanup fail a bootstrap."""
        path = self.base / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def _owned_processes(self) -> list[int]:
        """Live processes working on this cache's server: a mariadbd/install script naming its datadir,
        a client on its socket. Found by their command lines, so a kill at any moment leaves none unseen."""
        dirs = {os.path.realpath(self.datadir), os.path.realpath(self._partial_datadir)}
        sock = self._socket_path()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            for arg in args:
                if (arg.startswith("--datadir=") and os.path.realpath(arg.split("=", 1)[1]) in dirs
                        or arg == f"--socket={sock}"):
                    if _pid_alive(int(entry.name)):
                        found.append(int(entry.name))
                    break
        return found

    def _stop_strays(self) -> None:
        """Stop them all; again while any remain (an orphaned install script may spawn more)."""
        for _ in range(5):
            strays = self._owned_processes()
            if not strays:
                return
            for pid in strays:
                log.warning("intercode-sql: stopping process %d left on %s by an interrupted run", pid, self.base)
                self._kill(pid)
        raise ServerUnavailableError(f"intercode-sql: processes on {self.base} keep coming back: "
                                     f"{self._owned_processes()}; stop them and retry")

    def acquire(self) -> ServerInfo:
        with self._locked():
            state = self._state()
            # (an older hpl wrote server.json only once ready, without the key)
            healthy = (state and state.get("ready", True) and state["pid"] in self._owned_processes()
                       and self._answers(state))
            if not healthy:
                # anything here now was left by a run killed mid-start: stop it, never reuse it
                self._stop_strays()
                (self.base / "server.json").unlink(missing_ok=True)
                state = self._start()
            (self.base / "clients").mkdir(exist_ok=True)
            (self.base / "clients" / str(os.getpid())).touch()
            if not self.registered:
                atexit.register(self.release)
                self.registered = True
                LocalServer._in_process[(os.getpid(), self.base)] += 1
        return ServerInfo(**state["info"])

    def _answers(self, state: dict) -> bool:
        try:
            connect(ServerInfo(**state["info"]).admin_args(), connection_timeout=3).close()
            return True
        except Exception:  # noqa: BLE001
            return False

    def _write_state(self, state: dict) -> None:
        tmp = self.base / "server.json.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self.base / "server.json")

    def _initialise(self) -> None:
        """mariadb-install-db into data.partial/, renamed to data/ only once it has finished: a kill
        midway leaves data.partial/, which the next run removes (a half-made datadir fails later with
        errors like 'wrong space ID')."""
        partial = self._partial_datadir
        if partial.exists():
            log.warning("intercode-sql: removing %s, an initialisation that did not finish; rebuilding", partial)
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(self.datadir, ignore_errors=True)
        (self.base / "admin.json").unlink(missing_ok=True)
        installer = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if installer is None:
            raise ServerUnavailableError("intercode-sql: mariadb-install-db not found (apt-get install mariadb-server)")
        proc = subprocess.run(
            [installer, "--no-defaults", f"--datadir={partial}", f"--tmpdir={self._tmpdir()}",
             "--auth-root-authentication-method=normal",
             "--skip-test-db", "--lower-case-table-names=1", *(["--user=root"] if os.geteuid() == 0 else [])],
            capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise ServerUnavailableError(f"intercode-sql: initialising {partial} failed:\n{proc.stderr[-2000:]}")
        partial.rename(self.datadir)

    def _start(self) -> dict:
        datadir, sock, log_file = self.datadir, self._socket_path(), self.base / "server.log"
        if not (datadir / "mysql").exists():
            self._initialise()
        port = _free_port()
        cmd = [self.binary, "--no-defaults", f"--datadir={datadir}", f"--tmpdir={self._tmpdir()}",
               f"--socket={sock}", f"--port={port}",
               "--bind-address=127.0.0.1", "--skip-name-resolve", "--lower-case-table-names=1",
               f"--pid-file={self.base / 'mysqld.pid'}", f"--log-error={log_file}", "--max-connections=1000",
               *(["--user=root"] if os.geteuid() == 0 else [])]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        info = ServerInfo(host="127.0.0.1", port=port, admin_user="root", admin_password="", socket=sock,
                          backend="local", flavor="mariadb" if "mariadb" in self.binary else "mysql")
        self._process = proc  # kept, so that it is reaped by its Popen (no "still running" warning)
        self._write_state({"pid": proc.pid, "info": asdict(info), "ready": False, "owner": os.getpid()})
        try:
            self._wait_and_prepare(proc, info, log_file)
        except BaseException:
            self._kill(proc.pid)  # a failed start or load never leaves a server behind
            self._forget_process()
            (self.base / "server.json").unlink(missing_ok=True)
            raise
        state = {"pid": proc.pid, "info": asdict(info), "ready": True, "owner": os.getpid()}
        self._write_state(state)
        return state

    def _wait_and_prepare(self, proc: subprocess.Popen, info: ServerInfo, log_file: Path) -> None:
        """Wait until the server answers, give root a password (first start), load the dump."""
        password_file = self.base / "admin.json"
        stored = json.loads(password_file.read_text())["password"] if password_file.exists() else None
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = log_file.read_text()[-2000:] if log_file.exists() else ""
                raise ServerUnavailableError(
                    f"intercode-sql: {self.binary} exited with {proc.returncode}:\n{tail}\n"
                    f"  If its datadir is damaged, delete {self.base} and it is rebuilt on the next run.")
            # the stored password, or none: a run killed between initialising and setting it
            for password in dict.fromkeys([p for p in (stored, "") if p is not None]):
                info.admin_password = password
                try:
                    connect(info.admin_args(), connection_timeout=2).close()
                    break
                except Exception:  # noqa: BLE001
                    continue
            else:
                if time.monotonic() > deadline:
                    raise ServerUnavailableError(f"intercode-sql: {self.binary} did not answer within 60 s") from None
                time.sleep(0.05)
                continue
            break
        if not info.admin_password:  # first start: a random root password, kept beside the datadir (0600)
            password = secrets.token_hex(16)
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:  # written before it is set, so a kill in between loses nothing
                json.dump({"password": password}, f)
            cnx = connect(info.admin_args())
            cnx.cursor().execute(f"ALTER USER 'root'@'localhost' IDENTIFIED BY '{password}'")
            cnx.close()
            info.admin_password = password
        ensure_loaded(info, self.dump, self.digest)

    def release(self) -> None:
        """Unregister; the last client shuts the server down."""
        if not self.registered:
            return
        self.registered = False
        key = (os.getpid(), self.base)
        LocalServer._in_process[key] -= 1
        if LocalServer._in_process[key] > 0:
            return  # another LocalServer of this process (envs with other settings) still uses it
        with self._locked():
            (self.base / "clients" / str(os.getpid())).unlink(missing_ok=True)
            if self._clients():
                return
            self._stop_recorded()

    def _stop_recorded(self) -> None:
        """Stop the recorded server (only if it is still ours: pids are reused) and forget it."""
        state = self._state()
        if state and state.get("pid") in self._owned_processes():
            self._kill(state["pid"])
        self._forget_process()
        (self.base / "server.json").unlink(missing_ok=True)

    def _forget_process(self) -> None:
        """Drop the Popen of a server this process started once it has ended (polled, so that the
        Popen knows it was reaped)."""
        if self._process is not None and self._process.poll() is not None:
            self._process = None

    @staticmethod
    def _kill(pid: int | None, timeout: float = 30) -> None:
        if not pid or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # mariadbd shuts down cleanly on SIGTERM
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def stop_now(self) -> None:
        """Stop the server whatever clients remain (tests, `hpl-data`)."""
        with self._locked():
            self._stop_recorded()
            shutil.rmtree(self.base / "clients", ignore_errors=True)


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


def make_server(backend: str | None, dump: Path, server: str | None = None, image: str | None = None) -> SqlServer:
    """``backend``: 'local', 'url' (``server`` = a mysql:// URL), 'docker' (``image`` = the base image,
    e.g. mysql:8.0) or None: a URL if given, else local, else docker."""
    from hpl_envs.intercode_sql.docker_backend import DockerServer

    if backend not in (None, "local", "url", "docker"):
        raise ValueError(f"intercode-sql: unknown backend {backend!r} (local, url, docker)")
    if server and backend in (None, "url"):
        return UrlServer(server, dump)
    if backend == "url":
        raise ValueError("intercode-sql: backend 'url' needs url='mysql://user:pass@host:port'")
    if backend == "local":
        return LocalServer(dump)
    if backend == "docker":
        return DockerServer(dump, image=image)
    return FirstAvailableServer([("local", lambda: LocalServer(dump)), ("docker", lambda: DockerServer(dump, image))])
