"""What the server asks an env worker besides episodes (``Op.RUN``: ``fn(env, env_name, saved, *args)``)."""

from __future__ import annotations

from typing import Any


def task_ids(env: Any, env_name: str, saved: dict, split: str) -> list[str]:
    """The task ids of ``split``, in the env's order."""
    return [str(t) for t in env.task_ids(split)]
