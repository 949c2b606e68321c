"""InterCode-SQL's ``local`` backend: hpl's own ``mariadbd``/``mysqld`` on 127.0.0.1.

A private datadir under the cache, a free port and ``lower_case_table_names=1``; the Spider dump is
loaded once and reused while its checksum matches. Concurrent hpl processes share one server: each
registers itself in ``clients/``; the last one to leave shuts it down (a client killed with SIGKILL
is noticed and pruned by the next start or stop).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

from hpl_envs.data import cache_dir, file_digest
from hpl_envs.intercode_sql.servers.base import (
    ServerInfo,
    ServerUnavailableError,
    SqlServer,
    connect,
    ensure_loaded,
    pid_alive,
)

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_server_binary() -> str | None:
    for name in ("mariadbd", "mysqld"):
        for d in (None, "/usr/sbin", "/usr/local/sbin", "/usr/libexec"):
            path = shutil.which(name, path=d) if d else shutil.which(name)
            if path:
                return path
    return None


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
            if p.name.isdigit() and pid_alive(int(p.name)):
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
                    if pid_alive(int(entry.name)):
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
        if not pid or not pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # mariadbd shuts down cleanly on SIGTERM
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
