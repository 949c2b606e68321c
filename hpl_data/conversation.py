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
        msgs.append({"role": "assistant", "content": format_turn(step["action"], step.get("thought"), env_name)})
        if i + 1 < len(steps):
            msgs.append({"role": "user", "content": format_observation(steps[i + 1]["observation"], env_name)})
    return msgs
