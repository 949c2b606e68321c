"""ReAct turn formatting and parsing (``Thought: ...\\nAction: ...``), ETO/IPR-compatible."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpl_envs.registry import EnvProfile, profile

# Possessive quantifiers (``*+``) keep matching linear in the line length: with plain ``\s*\**\s*``
# a long run of spaces is split between the two ``\s*`` in every possible way before the match
# fails (32 k spaces took 4 s). Each run is followed by a character none of them can match
# ('a', 't', ':', '`' or the end), so giving nothing back never loses a match: the results are
# those of the greedy patterns (tests/test_react_prompts.py checks this against them).
_ACTION_RE = re.compile(r"^\s*+\**+\s*+action\s*+\**+\s*+[:：]\s*+\**+\s*+(.*)$", re.IGNORECASE)
_THOUGHT_RE = re.compile(r"^\s*+\**+\s*+thought\s*+\**+\s*+[:：]\s*+\**+\s*+", re.IGNORECASE)
_FENCE_RE = re.compile(r"^```[\w-]*+\s*+\n?(.*?)\n?```$", re.DOTALL)


@dataclass
class ParsedTurn:
    thought: str
    action: str
    ok: bool  # False when no "Action:" line was found and a fallback was used
    error: str = ""


def _profile(env: str | EnvProfile) -> EnvProfile:
    return env if isinstance(env, EnvProfile) else profile(env)


def format_observation(observation: str, env: str | EnvProfile) -> str:
    """The user turn that carries an env observation, as ETO/IPR write it for each env
    (WebShop: ``Observation:\\n...``; ALFWorld, InterCode-SQL: ``Observation: ...``). The env is
    required: each env's format differs, and a silent default would give another env's."""
    return f"Observation:{_profile(env).observation_separator}{observation}"


def format_turn(action: str, thought: str | None, env: str | EnvProfile) -> str:
    """An assistant turn; action-only when no thought is known. An env with an ``action_fence``
    puts its actions in that code fence (IPR's ```sql), except the bare control words."""
    p = _profile(env)
    if p.action_fence and not action.strip().lower().startswith(p.unfenced_actions):
        action = f"\n```{p.action_fence}\n{action}\n```"
    return f"Thought: {thought}\nAction: {action}" if thought else f"Action: {action}"


def _clean(action: str) -> str:
    action = action.strip()
    m = _FENCE_RE.match(action)
    if m:
        action = m.group(1).strip()
    action = action.strip("`").strip()
    if len(action) >= 2 and action[0] == action[-1] and action[0] in "\"'":
        action = action[1:-1].strip()
    return action


def parse_react(text: str, multiline: bool = False) -> ParsedTurn:
    """Extract the action from model output.

    Takes the text after the *last* ``Action:`` (any case, optional markdown bold); by default
    only its first line, because WebShop/ALFWorld actions are one line (``multiline=True`` keeps
    the rest, e.g. for SQL). Code fences and surrounding quotes are removed. Without an
    ``Action:`` line the last non-empty line is used and ``ok`` is False.
    """
    if not isinstance(text, str):
        return ParsedTurn("", "", False, f"model output is {type(text).__name__}, not text")
    lines = text.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        m = _ACTION_RE.match(lines[i])
        if m:
            rest = [m.group(1)] + (lines[i + 1:] if multiline or not m.group(1).strip() else [])
            action = _clean("\n".join(rest))
            if not multiline:
                action = action.splitlines()[0].strip() if action else ""
            thought = "\n".join(lines[:i]).strip()
            thought = _THOUGHT_RE.sub("", thought, count=1).strip()
            return ParsedTurn(thought, action, bool(action), "" if action else "empty action")
    non_empty = [ln for ln in lines if ln.strip()]
    if not non_empty:
        return ParsedTurn("", "", False, "empty model output")
    block = _clean(text.strip())
    last = block.splitlines()[-1].strip() if block else ""
    return ParsedTurn("", last, False, "no 'Action:' line")
