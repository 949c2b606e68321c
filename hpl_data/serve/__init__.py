"""``hpl-serve``: hpl's envs behind OpenEnv's HTTP / WebSocket protocol.

The front end (:mod:`.app`, FastAPI) speaks OpenEnv's wire format, taken from the ``openenv``
package's own message models, so OpenEnv's ``EnvClient`` and what is built on it work unchanged.
Behind it, :class:`.sessions.SessionManager` keeps many sessions on few env processes: the engine's
worker pool, which switches a worker's env between episodes by snapshot. The same snapshots give the
extensions no other env server has: list a split's tasks, reset to a named task, and snapshot /
restore / fork a session. :mod:`.client` is a typed client on OpenEnv's ``EnvClient``.
"""

from hpl_data.serve.config import ServeConfig
from hpl_data.serve.sessions import SessionError, SessionManager

__all__ = ["ServeConfig", "SessionError", "SessionManager"]
