"""Run ``hpl-serve``: uvicorn on 127.0.0.1 (or a unix socket) with the app of :mod:`.app`."""

from __future__ import annotations

import asyncio

import uvicorn

from hpl_data.serve.app import build_app
from hpl_data.serve.config import ServeConfig

WS_MAX_MESSAGE = 16 * 1024 * 1024  # larger frames close the socket (1009); smaller ones over the limit get an error


def uvicorn_config(config: ServeConfig, log_level: str = "warning") -> uvicorn.Config:
    app = build_app(config)
    where = {"uds": config.unix_socket} if config.unix_socket else {"host": config.host, "port": config.port}
    return uvicorn.Config(app, **where, log_level=log_level, ws="websockets-sansio", lifespan="on",
                          ws_max_size=max(WS_MAX_MESSAGE, 2 * config.max_request_bytes),
                          ws_per_message_deflate=False,  # loopback: compressing every frame only costs CPU
                          timeout_graceful_shutdown=5, access_log=False)


def serve(config: ServeConfig, log_level: str = "warning") -> None:
    """Serve until SIGINT / SIGTERM; the worker pool is stopped on the way out."""
    config.check()
    server = uvicorn.Server(uvicorn_config(config, log_level))
    asyncio.run(server.serve())
    if not server.started:
        raise OSError(f"hpl-serve could not start on {config.unix_socket or f'{config.host}:{config.port}'} "
                      "(port in use? see the log above)")
