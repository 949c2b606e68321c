"""MySQL-compatible servers for InterCode-SQL, started and stopped by hpl.

Backends (one interface, :class:`~.base.SqlServer`):

* ``local`` (:mod:`.local`) -- hpl's own ``mariadbd``/``mysqld`` on 127.0.0.1, shared by the hpl
  processes of this machine and user; the last one to leave shuts it down.
* ``url`` (:mod:`.url`) -- any server given as ``mysql://user:pass@host:port``; the data is loaded
  if missing.
* ``docker`` (:mod:`.docker`) -- a container from ``docker/intercode-sql.Dockerfile`` through the
  ``docker`` SDK.

With no backend chosen, local then docker are tried (:class:`~.base.FirstAvailableServer`).
Every backend ends in the same state: see :mod:`.base`.
"""

from __future__ import annotations

from pathlib import Path

from hpl_envs.intercode_sql.servers.base import (
    AGENT_MAX_STATEMENT_TIME_S,
    FirstAvailableServer,
    ServerInfo,
    ServerUnavailableError,
    SqlServer,
    connect,
    dump_databases,
)
from hpl_envs.intercode_sql.servers.docker import DockerServer
from hpl_envs.intercode_sql.servers.local import LocalServer, find_server_binary
from hpl_envs.intercode_sql.servers.url import UrlServer

BACKENDS = ("local", "url", "docker")

__all__ = ["AGENT_MAX_STATEMENT_TIME_S", "BACKENDS", "DockerServer", "FirstAvailableServer", "LocalServer",
           "ServerInfo", "ServerUnavailableError", "SqlServer", "UrlServer", "connect", "dump_databases",
           "find_server_binary", "make_server"]


def make_server(backend: str | None, dump: Path, server: str | None = None, image: str | None = None) -> SqlServer:
    """``backend``: 'local', 'url' (``server`` = a mysql:// URL), 'docker' (``image`` = the base image,
    e.g. mysql:8.0) or None: a URL if given, else local, else docker."""
    if backend not in (None, *BACKENDS):
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
