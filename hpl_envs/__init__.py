"""hpl_envs: text environments for LLM agents (WebShop, ALFWorld, InterCode-SQL) with exact
snapshots. Importing this package registers the ``hpl/...`` gymnasium ids."""

from hpl_envs.registry import ENVS, canonical, make_env, register_all

register_all()

__all__ = ["ENVS", "canonical", "make_env", "register_all"]
__version__ = "0.1.0"
