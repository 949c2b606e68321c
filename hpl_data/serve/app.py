"""The front end of ``hpl-serve``: OpenEnv's routes and WebSocket sessions, plus hpl's extensions.

OpenEnv's protocol (from the ``openenv`` package's own models): ``GET /health``, ``/metadata``,
``/schema``, ``/state``; ``POST /reset``, ``/step``; and ``/ws``, where a client sends
``{"type": "reset" | "step" | "state" | "close", "data": ...}`` and gets ``{"type":
"observation" | "state" | "error", "data": ...}`` back. A WebSocket opens its own session (closed
with the socket) or attaches to one by ``/ws?session_id=ID``. OpenEnv's HTTP ``/reset`` and
``/step`` are one-shot; here ``/reset`` opens a session (its id is in the observation) and
``/step`` / ``/state`` take ``session_id``.

Extensions, under ``/hpl/``: ``GET /hpl/tasks?split=S``, ``reset`` with ``task_id``,
``POST /hpl/sessions/{id}/snapshot``, ``/restore``, ``/fork``, ``DELETE /hpl/sessions/{id}``,
``GET /hpl/stats``.
"""

from __future__ import annotations

import hmac
import json
import os
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Body, FastAPI, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from openenv.core.env_server.serialization import serialize_observation
from openenv.core.env_server.types import (
    EnvironmentMetadata,
    HealthResponse,
    ResetRequest,
    ResetResponse,
    SchemaResponse,
    StepRequest,
    StepResponse,
    WSErrorCode,
    WSResetMessage,
    WSStateResponse,
    WSStepMessage,
)
from pydantic import BaseModel, ValidationError

from hpl_data.serve.config import ServeConfig
from hpl_data.serve.models import HplAction, HplObservation, HplState
from hpl_data.serve.sessions import Session, SessionError, SessionManager

OPTIONAL_RESET_BODY = Body(default_factory=ResetRequest)  # OpenEnv's /reset takes no body, or one


class RestoreRequest(BaseModel):
    snapshot_id: str


def build_app(config: ServeConfig, manager: SessionManager | None = None) -> FastAPI:
    """The ASGI app; it starts the worker pool on start-up and stops it on shutdown."""
    manager = manager or SessionManager(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await manager.start()
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title=f"hpl-serve: {config.env}", lifespan=lifespan)
    app.state.manager = manager
    app.add_exception_handler(SessionError, _session_error_response)
    _add_openenv_routes(app, config, manager)
    _add_extension_routes(app, manager)
    app.add_api_websocket_route("/ws", _websocket_handler(config, manager))
    return LimitsMiddleware(app, config)


async def _session_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SessionError)
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status)


def _add_openenv_routes(app: FastAPI, config: ServeConfig, manager: SessionManager) -> None:
    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse()

    @app.get("/metadata", response_model=EnvironmentMetadata)
    async def metadata() -> EnvironmentMetadata:
        return EnvironmentMetadata(name=config.env, description=f"hpl's {config.env} env (split {config.split}), "
                                   "served by hpl-serve: OpenEnv protocol plus /hpl/ extensions")

    @app.get("/schema", response_model=SchemaResponse)
    async def schema() -> SchemaResponse:
        return SchemaResponse(action=HplAction.model_json_schema(), observation=HplObservation.model_json_schema(),
                              state=HplState.model_json_schema())

    @app.post("/reset", response_model=ResetResponse)
    async def reset(request: ResetRequest = OPTIONAL_RESET_BODY) -> ResetResponse:
        extra = request.model_extra or {}
        session_id = extra.get("session_id")
        session = manager.get(str(session_id)) if session_id is not None else manager.open()
        try:
            obs = await manager.reset(session, extra.get("task_id"), request.seed, request.episode_id)
        except SessionError:
            if session_id is None:
                await manager.close_session(session.id)
            raise
        return ResetResponse(**serialize_observation(obs))

    @app.post("/step", response_model=StepResponse)
    async def step(request: StepRequest) -> StepResponse:
        session = _session_of(manager, (request.model_extra or {}).get("session_id"))
        obs = await manager.step(session, _action(request.action))
        return StepResponse(**serialize_observation(obs))

    @app.get("/state", response_model=HplState)
    async def state(session_id: str | None = Query(default=None)) -> HplState:
        return _session_of(manager, session_id).state()


def _session_of(manager: SessionManager, session_id: Any) -> Session:
    if session_id is None:
        raise SessionError(400, "HTTP /step and /state need the session_id that /reset returned (or use /ws)",
                           "VALIDATION_ERROR")
    return manager.get(str(session_id))


def _action(data: dict) -> str:
    try:
        return HplAction.model_validate(data).action
    except ValidationError as e:
        raise SessionError(422, f"invalid action: {_first_error(e)}; expected {{\"action\": \"<text>\"}}",
                           "VALIDATION_ERROR") from None


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{'.'.join(str(x) for x in err['loc']) or 'message'}: {err['msg']}"


def _add_extension_routes(app: FastAPI, manager: SessionManager) -> None:
    @app.get("/hpl/tasks")
    async def tasks(split: str | None = None) -> dict:
        split = split or manager.config.split
        return {"split": split, "task_ids": await manager.task_ids(split)}

    @app.post("/hpl/sessions/{session_id}/snapshot")
    async def snapshot(session_id: str) -> dict:
        return {"snapshot_id": await manager.snapshot(manager.get(session_id))}

    @app.post("/hpl/sessions/{session_id}/restore", response_model=HplState)
    async def restore(session_id: str, request: RestoreRequest) -> HplState:
        return await manager.restore(manager.get(session_id), request.snapshot_id)

    @app.post("/hpl/sessions/{session_id}/fork")
    async def fork(session_id: str) -> dict:
        child = await manager.fork(manager.get(session_id))
        return {"session_id": child.id, "state": child.state().model_dump()}

    @app.delete("/hpl/sessions/{session_id}")
    async def close(session_id: str) -> dict:
        manager.get(session_id)
        await manager.close_session(session_id)
        return {"closed": session_id}

    @app.get("/hpl/stats")
    async def stats() -> dict:
        return {"sessions": len(manager.sessions), "max_sessions": manager.config.max_sessions,
                "episodes": manager.episodes, "server_pid": os.getpid(), "worker_pids": manager.pool.pids(),
                "worker_restarts": manager.counters.worker_restarts}


# --- WebSocket sessions
def _error(message: str, code: str) -> str:
    return json.dumps({"type": "error", "data": {"message": message, "code": code}})


def _websocket_handler(config: ServeConfig, manager: SessionManager):
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        requested = websocket.query_params.get("session_id")
        try:
            session = _attach(manager, requested) if requested else manager.open()
        except SessionError as e:
            await websocket.send_text(_error(e.message, e.code))
            await websocket.close()
            return
        try:
            await _serve_socket(websocket, config, manager, session.id)
        finally:
            if requested:
                session.attached = False
            else:
                await manager.close_session(session.id)

    return websocket_endpoint


def _attach(manager: SessionManager, session_id: str) -> Session:
    session = manager.get(session_id)
    if session.attached:
        raise SessionError(409, f"session {session_id} already has a WebSocket attached", "SESSION_ERROR")
    session.attached = True
    session.touch()
    return session


async def _serve_socket(websocket: WebSocket, config: ServeConfig, manager: SessionManager, session_id: str) -> None:
    """One socket's messages, in order, until it closes, sends ``close`` or loses its session."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        if raw is None:
            raw = (message.get("bytes") or b"").decode("utf-8", errors="replace")
        if len(raw) > config.max_request_bytes:
            await websocket.send_text(_error(f"message of {len(raw)} characters is over this server's limit of "
                                             f"{config.max_request_bytes} (--max-request-bytes)",
                                             WSErrorCode.VALIDATION_ERROR))
            continue
        try:
            reply = await _answer(raw, manager, session_id)
        except SessionError as e:
            await websocket.send_text(_error(e.message, e.code))
            if e.status in (404, 410):  # the session is gone (reaped, closed): so is this socket's purpose
                await websocket.close(code=1008)
                return
            continue
        if reply is None:
            await websocket.close()
            return
        await websocket.send_text(reply)


async def _answer(raw: str, manager: SessionManager, session_id: str) -> str | None:
    """The reply to one message (None for ``close``); a refused message raises :class:`SessionError`."""
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SessionError(400, f"Invalid JSON: {e}", WSErrorCode.INVALID_JSON) from None
    if not isinstance(message, dict):
        raise SessionError(400, "a message is a JSON object {\"type\": ..., \"data\": ...}",
                           WSErrorCode.VALIDATION_ERROR)
    kind = message.get("type")
    if kind == "close":
        return None
    session = manager.get(session_id)
    try:
        if kind == "reset":
            data = WSResetMessage(**message).data
            request = ResetRequest(**data)
            obs = await manager.reset(session, data.get("task_id"), request.seed, request.episode_id)
            return _observation_message(obs)
        if kind == "step":
            obs = await manager.step(session, _action(WSStepMessage(**message).data))
            return _observation_message(obs)
        if kind == "state":
            return WSStateResponse(data=session.state().model_dump()).model_dump_json()
    except ValidationError as e:
        raise SessionError(422, f"Invalid message: {_first_error(e)}", WSErrorCode.VALIDATION_ERROR) from None
    raise SessionError(400, f"Unknown message type: {kind!r}", WSErrorCode.UNKNOWN_TYPE)


def _observation_message(obs: HplObservation) -> str:
    """OpenEnv's ``WSObservationResponse`` as JSON, written directly (the hot path of every step)."""
    return json.dumps({"type": "observation", "data": serialize_observation(obs)})


# --- limits and auth, for HTTP and WebSocket alike
class LimitsMiddleware:
    """Bearer auth (when a token is set) and the HTTP body limit, before any route runs."""

    def __init__(self, app: FastAPI, config: ServeConfig) -> None:
        self.app, self.config = app, config
        self.state = app.state
        self._expected = f"Bearer {config.token}".encode() if config.token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        if self._expected is not None and not self._authorized(scope):
            return await _refuse(scope, send, 401, "missing or wrong bearer token (Authorization: Bearer ...)")
        if scope["type"] == "http":
            length = dict(scope.get("headers") or []).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.config.max_request_bytes:
                return await _refuse(scope, send, 413, f"request body of {int(length)} bytes is over this server's "
                                     f"limit of {self.config.max_request_bytes} (--max-request-bytes)")
            elif length is None:  # a chunked body: read it here, within the limit, and hand it on
                receive = await _buffered(receive, self.config.max_request_bytes)
                if receive is None:
                    return await _refuse(scope, send, 413, "request body over this server's limit of "
                                         f"{self.config.max_request_bytes} bytes (--max-request-bytes)")
        return await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


async def _buffered(receive, limit: int):
    """A ``receive`` replaying the whole body, read here; None when it is over ``limit`` bytes."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        more = message.get("more_body", False)
    return _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}], receive)


def _replay(messages: list[dict], receive):
    async def replay():
        return messages.pop(0) if messages else await receive()

    return replay


async def _refuse(scope, send, status: int, message: str) -> None:
    if scope["type"] == "websocket":  # closing before accepting answers the handshake with 403
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
