"""Action parsing is linear-time and gives exactly the originals' results.

The references are the original regexes (WebShop's ``(.+)\\[(.+)\\]``, hpl's former greedy ReAct
patterns), run on every short string of a small alphabet and on many random ones built from the
pieces that matter to the patterns (brackets, newlines, spaces, stars, colons, fences, Unicode
whitespace and case-folding letters).
"""

from __future__ import annotations

import itertools
import random
import re

import pytest

from hpl_envs import react
from hpl_envs.react import parse_react
from hpl_envs.webshop.env import parse_action

WEBSHOP_ORIGINAL = re.compile(r"(.+)\[(.+)\]")
REACT_ORIGINAL = {
    "_ACTION_RE": re.compile(r"^\s*\**\s*action\s*\**\s*[:：]\s*\**\s*(.*)$", re.IGNORECASE),
    "_THOUGHT_RE": re.compile(r"^\s*\**\s*thought\s*\**\s*[:：]\s*\**\s*", re.IGNORECASE),
    "_FENCE_RE": re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL),
}


def webshop_original(action: str) -> tuple[str, str | None]:
    m = WEBSHOP_ORIGINAL.match(action)
    return (action, None) if m is None else (m.group(1), m.group(2))


def random_strings(pieces: list[str], n: int, max_pieces: int, seed: int):
    rng = random.Random(seed)
    for _ in range(n):
        yield "".join(rng.choice(pieces) for _ in range(rng.randint(0, max_pieces)))


WEBSHOP_PIECES = ["[", "]", "[[", "]]", "a", "b c", " ", "\n", "\r", "\x85", "search", "click", "search[", "click["]


def test_webshop_parse_matches_original_on_every_short_string():
    for n in range(8):
        for chars in itertools.product("[]a\n", repeat=n):
            s = "".join(chars)
            assert parse_action(s) == webshop_original(s), repr(s)


def test_webshop_parse_matches_original_on_random_strings():
    for s in random_strings(WEBSHOP_PIECES, 20_000, 14, seed=1):
        assert parse_action(s) == webshop_original(s), repr(s)


REACT_PIECES = ["Action", "action", "ACTION", "Thought", "thought", "ſ", "ı", "K", ":", "：", "*", "**", " ", "   ",
                "\t", "\n", "\r\n", "\xa0", "\u2028", "\x1c", "`", "```", "```sql", "'", '"', "x", "search[a]",
                "click[b 1]", "-", "_", "Observation: ok"]


@pytest.fixture
def original_react(monkeypatch):
    def parse(text: str, multiline: bool) -> react.ParsedTurn:
        with monkeypatch.context() as m:
            for name, pattern in REACT_ORIGINAL.items():
                m.setattr(react, name, pattern)
            return parse_react(text, multiline=multiline)
    return parse


def test_parse_react_matches_original_on_random_strings(original_react):
    rng = random.Random(3)
    for i, s in enumerate(random_strings(REACT_PIECES, 20_000, 16, seed=2)):
        multiline = bool(i % 2)
        if i % 3 == 0:  # fenced, so that the fence pattern's alternatives are exercised too
            s = rng.choice(["```", "```sql\n", "Action: ```", "Action:\n```-x "]) + s + rng.choice(["```", "\n```", " ```\n"])
        assert parse_react(s, multiline=multiline) == original_react(s, multiline), repr(s)


def test_parse_react_matches_original_on_realistic_turns(original_react):
    turns = ["Thought: I need shoes.\nAction: search[red shoes]", "**Thought:** x\n**Action:** click[buy now]",
             "Action:\n```sql\nSELECT 1\n```", "  thought ： hm\n action：`click[a]`  ", "Action: ```\n```"]
    for s in turns:
        for multiline in (False, True):
            assert parse_react(s, multiline=multiline) == original_react(s, multiline), repr(s)


@pytest.mark.timeout(20)
def test_adversarial_inputs_parse_in_linear_time():
    """The issue's reproducers (seconds to minutes with the backtracking patterns) at 1 MB."""
    mb = 1 << 20
    assert parse_action("search" + "[" * mb) == ("search" + "[" * mb, None)
    assert parse_action("search[" + "[" * mb + "]") == ("search" + "[" * (mb - 1), "[")
    assert parse_react("Action: search[a]\n" + " " * mb + "y").action == "search[a]"
    assert parse_react(" " * mb + "y").action == "y"
    assert parse_react("```" + " " * mb + "y").ok is False
    assert parse_react("Thought:" + " *" * mb + "\nAction: x").action == "x"
