"""Env names, gymnasium ids and constructors.

``make_env("webshop", **kwargs)`` builds an unwrapped env (what the engine and builders use);
``gymnasium.make("hpl/WebShop-v0")`` works too once :mod:`hpl_envs` is imported.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

ENVS: dict[str, dict[str, Any]] = {
    "webshop": {"gym_id": "hpl/WebShop-v0", "entry_point": "hpl_envs.webshop.env:WebShopEnv",
                "max_turns": 10},
    "alfworld": {"gym_id": "hpl/ALFWorld-v0", "entry_point": "hpl_envs.alfworld.env:AlfWorldEnv", "max_turns": 30},
    "intercode-sql": {"gym_id": "hpl/InterCodeSQL-v0",
                      "entry_point": "hpl_envs.intercode_sql.env:InterCodeSqlEnv", "max_turns": 10},
}
ALIASES = {"web-shop": "webshop", "ws": "webshop", "sql": "intercode-sql", "intercode": "intercode-sql",
           "ic-sql": "intercode-sql", "alfred": "alfworld"}


def canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in ENVS:
        raise ValueError(f"unknown env {name!r}; available: {sorted(ENVS)}")
    return key


def make_env(name: str, **kwargs: Any):
    spec = ENVS[canonical(name)]
    module, cls = spec["entry_point"].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)(**kwargs)


def register_all() -> None:
    for spec in ENVS.values():
        if spec["gym_id"] not in gym.registry:
            gym.register(id=spec["gym_id"], entry_point=spec["entry_point"],
                         kwargs={"max_turns": spec["max_turns"]},
                         disable_env_checker=True, order_enforce=False)
