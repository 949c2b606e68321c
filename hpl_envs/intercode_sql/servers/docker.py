"""InterCode-SQL's ``docker`` backend: a MariaDB/MySQL container per hpl run, on a real Docker engine.

* Image: ``docker/intercode-sql.Dockerfile`` on a base (default ``hpl-mariadb-base:bookworm``, made
  offline with ``mmdebstrap`` + ``docker import`` when missing; ``mysql:8.0`` or ``mariadb:*`` where a
  registry answers), then started once to load the Spider dump with the local backend's own code
  (:func:`~hpl_envs.intercode_sql.servers.base.ensure_loaded`) and committed as
  ``hpl-intercode-sql:<content hash>``. An image with the right hash is reused, so it is built once.
* Container: ``--network none``; the server listens only on a unix socket in a host directory
  bind-mounted at ``/run/hpl``, so no traffic goes to Docker's bridge. Started by the first process
  that needs it (its worker processes share it), labelled with that owner's host, pid and start
  time, removed when the owner releases it or exits; containers whose owner is gone (SIGKILL) are
  removed by the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from hpl_envs.data import cache_dir, file_digest, file_lock
from hpl_envs.intercode_sql.servers.base import (
    ServerInfo,
    ServerUnavailableError,
    SqlServer,
    connect,
    ensure_loaded,
    pid_alive,
    server_flavor,
)

DOCKER_DIR = Path(__file__).resolve().parents[3] / "docker"
DOCKERFILE = "intercode-sql.Dockerfile"
ENTRYPOINT = "intercode-sql-server.sh"
OFFLINE_BASE = "hpl-mariadb-base:bookworm"
IMAGE_REPO = "hpl-intercode-sql"
ROLE = "intercode-sql"
LABEL_ROLE, LABEL_HOST, LABEL_PID, LABEL_START = "hpl.role", "hpl.owner_host", "hpl.owner_pid", "hpl.owner_start"
LABEL_SOCKET_DIR, LABEL_CONTENT = "hpl.socket_dir", "hpl.content_hash"
CONTAINER_SOCKET_DIR = "/run/hpl"
READY_TIMEOUT_S = 180
SHARE_ENV = "HPL_SQL_DOCKER_SERVER"  # set by the process that started the container, for its workers


def docker_client():
    """A client of an engine that answers, or a one-line reason why there is none."""
    try:
        import docker

        docker.from_env  # noqa: B018 - without the SDK, the repository's docker/ folder imports as `docker`
    except (ImportError, AttributeError):
        raise ServerUnavailableError("intercode-sql: the docker backend needs `pip install docker` "
                                     "(or `pip install 'hpl[docker]'`)") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means "no engine"
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise ServerUnavailableError(f"intercode-sql: no Docker engine answers at {where} ({type(e).__name__}: "
                                     f"{str(e)[:200]}); start one, e.g. `dockerd --bridge=none --iptables=false`")\
            from None
    return client


def host_id() -> str:
    """This machine (boot), so that a shared engine never prunes another machine's containers."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{os.uname().nodename}/{boot}"


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {LABEL_ROLE: ROLE, LABEL_HOST: host_id(), LABEL_PID: str(pid), LABEL_START: process_start(pid)}


def owner_alive(labels: dict[str, str]) -> bool:
    if labels.get(LABEL_HOST) != host_id():
        return True  # another machine's: not ours to judge
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return False
    return pid_alive(pid) and process_start(pid) == labels.get(LABEL_START, "")


def prune_orphans(client) -> list[str]:
    """Remove hpl SQL containers whose owning process is gone; returns their names."""
    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}={ROLE}"}):
        if owner_alive(c.labels):
            continue
        with contextlib.suppress(Exception):
            c.remove(force=True)
            removed.append(c.name)
        sock_dir = c.labels.get(LABEL_SOCKET_DIR, "")
        if sock_dir.startswith(tempfile.gettempdir()) and "hpl-sql-" in sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
    return removed


def _image_exists(client, ref: str) -> bool:
    import docker.errors

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base(client, base: str) -> str:
    """The base image's id: present, pulled, or (the offline default) made with mmdebstrap."""
    if not _image_exists(client, base):
        if base == OFFLINE_BASE:
            make_offline_base(client)
        else:
            try:
                client.images.pull(base)
            except Exception as e:  # noqa: BLE001
                raise ServerUnavailableError(f"intercode-sql: base image {base!r} is not here and cannot be pulled "
                                             f"({str(e)[:200]}); pull it on a machine with a registry, or use the "
                                             f"offline default {OFFLINE_BASE}") from None
    return client.images.get(base).id


def make_offline_base(client) -> None:
    """Debian bookworm minbase + mariadb-server from the apt mirror, imported as OFFLINE_BASE (~35 s)."""
    if shutil.which("mmdebstrap") is None:
        raise ServerUnavailableError(f"intercode-sql: image {OFFLINE_BASE} is missing and mmdebstrap is not installed "
                                     "to make it (apt-get install mmdebstrap)")
    with tempfile.TemporaryDirectory(prefix="hpl-rootfs-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        proc = subprocess.run(["mmdebstrap", "--variant=minbase", "--include=mariadb-server,mariadb-client",
                               "bookworm", str(tar)], capture_output=True, text=True, timeout=1200)
        if proc.returncode != 0:
            raise ServerUnavailableError(f"intercode-sql: mmdebstrap failed: {proc.stderr.strip()[-500:]}")
        repo, tag = OFFLINE_BASE.split(":")
        client.api.import_image_from_file(str(tar), repository=repo, tag=tag)


def build_context() -> bytes:
    """The Dockerfile folder as a tar (only the two files the image needs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, arcname in ((DOCKERFILE, "Dockerfile"), (ENTRYPOINT, ENTRYPOINT)):
            path = DOCKER_DIR / name
            if not path.exists():
                raise ServerUnavailableError(f"intercode-sql: {path} not found; the docker backend runs from a "
                                             "source checkout of hpl")
            tar.add(path, arcname=arcname)
    return buf.getvalue()


def content_hash(base_id: str, dump_digest: str) -> str:
    h = hashlib.sha256(base_id.encode() + dump_digest.encode())
    for name in (DOCKERFILE, ENTRYPOINT):
        h.update((DOCKER_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def _build_lock():
    return file_lock(cache_dir() / "docker-build.lock")


class SqlContainer:
    """One running server container with its socket directory; removed by :meth:`remove`."""

    def __init__(self, client, image: str, labels: dict[str, str] | None = None) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="hpl-sql-")
        os.chmod(self.sock_dir, 0o777)  # the server may run as another uid in the container
        self.password = secrets.token_hex(16)
        self.container = client.containers.run(
            image, detach=True, network_mode="none", environment={"HPL_ROOT_PASSWORD": self.password},
            volumes={self.sock_dir: {"bind": CONTAINER_SOCKET_DIR, "mode": "rw"}},
            labels={**owner_labels(), LABEL_SOCKET_DIR: self.sock_dir, **(labels or {})},
            name=f"hpl-sql-{os.getpid()}-{secrets.token_hex(3)}")
        self.info = ServerInfo(host="localhost", port=3306, admin_user="root", admin_password=self.password,
                               socket=os.path.join(self.sock_dir, "mysqld.sock"), backend="docker")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> ServerInfo:
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(self.info.socket):
                try:
                    cnx = connect(self.info.admin_args(), connection_timeout=3)
                    self.info.flavor = server_flavor(cnx)
                    cnx.close()
                    return self.info
                except Exception:  # noqa: BLE001 - not up yet, or the password not set yet
                    pass
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                logs = self.container.logs(tail=20).decode(errors="replace")
                self.remove()
                raise ServerUnavailableError(f"intercode-sql: the server container exited:\n{logs}")
            if time.monotonic() > deadline:
                self.remove()
                raise ServerUnavailableError(f"intercode-sql: the server container did not answer within {timeout:.0f} s")
            time.sleep(0.1)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def ensure_image(client, dump: Path, base: str = OFFLINE_BASE) -> str:
    """``hpl-intercode-sql:<hash>`` for this base, Dockerfile and dump: found, or built and loaded."""
    dump_digest = file_digest([dump])
    with _build_lock():
        base_id = ensure_base(client, base)
        digest = content_hash(base_id, dump_digest)
        ref = f"{IMAGE_REPO}:{digest}"
        if _image_exists(client, ref):
            return ref
        labels = {LABEL_CONTENT: digest, "hpl.base": base}
        try:
            server_image, _ = client.images.build(fileobj=io.BytesIO(build_context()), custom_context=True,
                                                  buildargs={"BASE": base}, rm=True, forcerm=True, pull=False,
                                                  network_mode="none", labels=labels)
        except Exception as e:  # noqa: BLE001 - BuildError carries the log
            log = "".join(str(x.get("stream", x.get("error", ""))) for x in getattr(e, "build_log", []) or [])
            raise ServerUnavailableError(f"intercode-sql: building the server image failed: {e}\n{log[-1500:]}") from None
        box = SqlContainer(client, server_image.id, labels={"hpl.building": ref})
        try:
            info = box.wait_ready()
            ensure_loaded(info, dump, dump_digest)
            box.container.stop(timeout=120)  # a clean shutdown flushes InnoDB before the commit
            box.container.commit(repository=IMAGE_REPO, tag=digest, changes=[f'LABEL {k}="{v}"' for k, v in
                                                                             labels.items()])
        finally:
            box.remove()
        return ref


class DockerServer(SqlServer):
    """A server container from :func:`ensure_image`, started by the first hpl process that needs it
    and shared with the worker processes it spawns (they find it through ``SHARE_ENV``); the
    starting process removes it at release or exit."""

    name = "docker"

    def __init__(self, dump: Path, image: str | None = None) -> None:
        self.dump = dump
        self.base = image or OFFLINE_BASE
        self.box: SqlContainer | None = None
        self.owner_pid = 0
        self.info: ServerInfo | None = None

    def acquire(self) -> ServerInfo:
        if self.info is None:
            self.info = self._inherited() or self._start()
        return self.info

    def _inherited(self) -> ServerInfo | None:
        """The parent process's container, if it started one for the same base and it answers."""
        try:
            state = json.loads(os.environ.get(SHARE_ENV, ""))
            if state["base"] != self.base:
                return None
            info = ServerInfo(**state["info"])
            connect(info.admin_args(), connection_timeout=3).close()
            return info
        except Exception:  # noqa: BLE001 - none, another base, or gone: start our own
            return None

    def _start(self) -> ServerInfo:
        client = docker_client()
        prune_orphans(client)
        image = ensure_image(client, self.dump, self.base)
        self.box, self.owner_pid = SqlContainer(client, image), os.getpid()
        atexit.register(self.release)
        info = self.box.wait_ready()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.box.sock_dir, "init.sql"))  # holds root's password
        ensure_loaded(info, self.dump, file_digest([self.dump]))  # the same agent account as 'local'
        os.environ[SHARE_ENV] = json.dumps({"base": self.base, "info": asdict(info)})
        return info

    def release(self) -> None:
        if self.box is not None and self.owner_pid == os.getpid():  # not in a forked child
            os.environ.pop(SHARE_ENV, None)
            self.box.remove()
            self.box = None
        self.info = None


def main(argv: list[str] | None = None) -> None:
    """`python -m hpl_envs.intercode_sql.servers.docker build|prune [--base IMAGE]`"""
    import argparse

    from hpl_envs.data import require

    p = argparse.ArgumentParser(prog="python -m hpl_envs.intercode_sql.servers.docker", description=main.__doc__)
    p.add_argument("command", choices=["build", "prune"])
    p.add_argument("--base", default=OFFLINE_BASE, help=f"base image (default {OFFLINE_BASE}; e.g. mysql:8.0)")
    args = p.parse_args(argv)
    client = docker_client()
    if args.command == "prune":
        print(json.dumps(prune_orphans(client)))
        return
    start = time.monotonic()
    ref = ensure_image(client, require("intercode_sql/ic_spider_dbs.sql", "intercode-sql"), args.base)
    print(f"{ref} ({time.monotonic() - start:.1f} s)")


if __name__ == "__main__":
    main()
