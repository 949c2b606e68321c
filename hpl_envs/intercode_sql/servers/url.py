"""InterCode-SQL's ``url`` backend: an existing server given as ``mysql://user:pass@host:port``;
hpl loads the Spider dump into it if missing and creates the agent account."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from hpl_envs.data import file_digest
from hpl_envs.intercode_sql.servers.base import (
    ServerInfo,
    ServerUnavailableError,
    SqlServer,
    connect,
    ensure_loaded,
    server_flavor,
)


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
            self.info.flavor = server_flavor(cnx)
            cnx.close()
        except Exception as e:  # noqa: BLE001
            raise ServerUnavailableError(f"intercode-sql: cannot connect to {self.info.host}:{self.info.port}: {e}") from e
        ensure_loaded(self.info, self.dump, file_digest([self.dump]))
        return self.info
