"""Turn episodes into chat conversations (ETO/IPR layout) and TRL-style preference rows."""

from __future__ import annotations

from hpl_envs.prompts import first_message
from hpl_envs.react import format_observation, format_turn


def episode_messages(env_name: str, episode: dict, prompts: str = "default") -> list[dict]:
    """[first user message with instruction + example + task, assistant action, user observation, ...].

    Ends with the last assistant turn; the observation after the final action is not part of
    the conversation (the model never answers it). Built-in agents produce no thoughts, so their
    turns are action-only (``Action: ...``).
    """
    steps = episode["steps"]
    if not steps:
        return []
    msgs = [{"role": "user", "content": first_message(env_name, steps[0]["observation"], prompts)}]
    for i, step in enumerate(steps):
        raw = step.get("raw_output")  # an LLM's own words, exactly as it saw them in its history
        content = raw if raw is not None else format_turn(step["action"], step.get("thought"), env_name)
        msgs.append({"role": "assistant", "content": content})
        if i + 1 < len(steps):
            msgs.append({"role": "user", "content": format_observation(steps[i + 1]["observation"], env_name)})
    return msgs


def trajectory_rows(env_name: str, split: str, role: str, episodes: list[dict], prompts: str) -> list[dict]:
    """Rows of the ``trajectories`` table (schema in :mod:`hpl_data.parquet`)."""
    rows = []
    for e in episodes:
        rows.append({
            "env": env_name, "split": split, "task_id": e["task_id"], "task_type": e["task_type"],
            "instruction": e["instruction"], "role": role, "agent": e["agent"], "seed": e["seed"],
            "reward": e["reward"], "won": e["won"], "n_steps": len(e["steps"]), "truncated": e["truncated"],
            "error": e["error"], "stop_reason": e.get("stop_reason", ""),
            "messages": episode_messages(env_name, e, prompts) if not e["error"] else [],
            "actions": [s["action"] for s in e["steps"]],
            "observations": [s["observation"] for s in e["steps"]] + [e["final_observation"]],
            "action_valid": [s["action_valid"] for s in e["steps"]],
            "logprobs": [s.get("logprob") for s in e["steps"]],
            "entropies": [s.get("entropy") for s in e["steps"]],
        })
    return rows
