"""What ``hpl-serve`` runs with: one typed config, parsed from flags by :mod:`hpl_data.cli_serve`."""

from __future__ import annotations

from dataclasses import dataclass, field

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServeConfig:
    """An env server's settings. It is also the worker pool's settings
    (:class:`hpl_data.workers.PoolSettings`), so :func:`hpl_data.workers.make_pool` reads it as is."""

    env: str
    split: str = "test"  # where a reset without a task id draws its task from
    env_kwargs: dict = field(default_factory=dict)
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    unix_socket: str | None = None  # serve on this unix socket instead of host:port
    token: str | None = None  # bearer token every request must carry; required off loopback
    max_sessions: int = 256
    session_ttl_s: float = 600.0  # a session idle this long is closed and its slot freed
    max_action_chars: int = 16_384  # a longer action is refused (422), before it reaches an env
    max_request_bytes: int = 65_536  # an HTTP body or WebSocket message larger than this is refused
    max_snapshots_per_session: int = 64
    seed: int = 0  # draws of tasks for resets that give neither a task id nor a seed
    # worker pool settings (hpl_data.workers.PoolSettings)
    env_timeout_s: float = 120.0
    start_method: str = "spawn"
    ray: str | None = None
    ray_cpus_per_worker: float = 1.0

    def check(self) -> None:
        """Refuse settings that would expose an env without auth, or that cannot work."""
        if self.unix_socket is None and self.host not in LOOPBACK and not self.token:
            raise ValueError(f"--host {self.host} serves beyond this machine: add --token SECRET (bearer auth on "
                             "every request), or keep the default --host 127.0.0.1")
        for name in ("workers", "max_sessions", "max_action_chars", "max_request_bytes", "max_snapshots_per_session"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.session_ttl_s > 0:
            raise ValueError(f"session_ttl_s must be > 0, got {self.session_ttl_s}")
