"""A typed client for ``hpl-serve`` on OpenEnv's ``EnvClient`` (its transport unchanged), with the
server's extensions (task lists, snapshot / restore / fork) over plain HTTP."""

from __future__ import annotations

from typing import Any

import httpx
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient

from hpl_data.serve.models import HplAction, HplObservation, HplState


class HplEnvClient(EnvClient[HplAction, HplObservation, HplState]):
    """``HplEnvClient(base_url=...)`` opens its own session; ``session_id=`` attaches to an existing
    one (a fork) through OpenEnv's ``/ws?session_id=``."""

    def __init__(self, base_url: str, session_id: str | None = None, token: str | None = None, **kwargs: Any) -> None:
        self._attach_to = session_id
        self._token = token
        headers = kwargs.pop("headers", None) or ({"Authorization": f"Bearer {token}"} if token else None)
        super().__init__(base_url=base_url, headers=headers, **kwargs)

    def _set_base_url(self, base_url: str) -> None:
        super()._set_base_url(base_url)
        if self._attach_to:
            self._ws_url = f"{self._ws_url}?session_id={self._attach_to}"

    def _step_payload(self, action: HplAction | str) -> dict[str, Any]:
        return {"action": action.action if isinstance(action, HplAction) else action}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[HplObservation]:
        obs = HplObservation(**payload["observation"], reward=payload.get("reward"), done=payload.get("done", False))
        return StepResult(observation=obs, reward=payload.get("reward"), done=payload.get("done", False),
                          metadata=payload.get("metadata"))

    def _parse_state(self, payload: dict[str, Any]) -> HplState:
        return HplState(**payload)

    # --- extensions (HTTP)
    def _http(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        response = httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=60, **kwargs)
        if response.status_code >= 400:
            raise RuntimeError(f"hpl-serve {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def tasks(self, split: str | None = None) -> list[str]:
        return self._http("GET", "/hpl/tasks", params={"split": split} if split else None)["task_ids"]

    def snapshot(self, session_id: str) -> str:
        return self._http("POST", f"/hpl/sessions/{session_id}/snapshot")["snapshot_id"]

    def restore(self, session_id: str, snapshot_id: str) -> HplState:
        return HplState(**self._http("POST", f"/hpl/sessions/{session_id}/restore", json={"snapshot_id": snapshot_id}))

    def fork(self, session_id: str) -> str:
        """A new session continuing from this one's state; attach to it with ``session_id=``."""
        return self._http("POST", f"/hpl/sessions/{session_id}/fork")["session_id"]

    def close_session(self, session_id: str) -> None:
        self._http("DELETE", f"/hpl/sessions/{session_id}")
