"""WebShop's built-in agents."""

from __future__ import annotations

import math
import random
import re
from typing import Any

from rapidfuzz import fuzz

from hpl_envs.webshop.pages import SEP
from hpl_envs.webshop.search import SEARCH_RETURN_N

_PRICE_CLAUSE = re.compile(r",? and price lower than [\d.]+ dollars\s*$")
_OPTION_CLAUSE = re.compile(r" with \w[\w ]*: .*$")


def core_instruction(instruction: str) -> str:
    """The instruction without the price clause and the ``with <option>: ...`` tail."""
    text = _PRICE_CLAUSE.sub("", instruction)
    return _OPTION_CLAUSE.sub("", text).strip()


class WebShopOracle:
    """Buys the goal product with the goal options, using privileged knowledge of the goal.

    It picks the search query (instruction, product query, or title) under which the target
    ranks highest, pages to it, clicks it, selects each goal option value and buys. It does
    not pick anything the reward would prefer over the goal; so its score is the original
    reward of an exact purchase.
    """

    name = "oracle"

    def __init__(self, seed: int = 0, **_: Any) -> None:
        self.plan: list[str] = []

    def reset(self, env: Any, observation: str, info: dict) -> None:
        goal = env.goal(info["task_id"])
        target = env.shared.catalog.index(goal.asin)
        search = env.shared.search
        best: tuple[int, str] | None = None
        for query in (core_instruction(goal.instruction_text), goal.instruction_text, goal.query, goal.name):
            q = re.sub(r"[\[\]\n\r]", " ", query).lower()  # brackets would break click/search parsing
            hits = search.search(q, SEARCH_RETURN_N)
            if target in hits and (best is None or hits.index(target) < best[0]):
                best = (hits.index(target), q)
            if best is not None and best[0] < 10:
                break
        if best is None:  # the target is never in the top 50: browse its category instead
            cat_hits = env.shared.catalog.rows_where("category", goal.category)
            best = (cat_hits.index(target), f"<c> {goal.category}")
        rank, query = best
        values = list(goal.goal_options.values()) if isinstance(goal.goal_options, dict) else list(goal.goal_options)
        self.plan = ([f"search[{query}]"] + ["click[next >]"] * (rank // 10)
                     + [f"click[{goal.asin.lower()}]"] + [f"click[{v}]" for v in values] + ["click[buy now]"])

    def act(self, observation: str, info: dict) -> str:
        return self.plan.pop(0) if self.plan else "click[buy now]"


class WebShopHeuristic:
    """A rule-based shopper in the spirit of WebShop's rule baseline, made stochastic.

    Searches the instruction (dropping words with probability ``word_dropout``), picks a result
    by softmax over fuzzy title/instruction similarity at ``temperature`` (0 = greedy),
    selects per option group the value that best matches the instruction, and buys. With
    probability ``epsilon`` it takes a uniformly random admissible action instead, so Monte-Carlo
    rollouts from the same state differ. Uses only the observation and ``info``.
    """

    name = "heuristic"

    def __init__(self, seed: int = 0, temperature: float = 0.1, epsilon: float = 0.1,
                 word_dropout: float = 0.1, **_: Any) -> None:
        self.rng = random.Random(seed)
        self.temperature = temperature
        self.epsilon = epsilon
        self.word_dropout = word_dropout

    def reset(self, env: Any, observation: str, info: dict) -> None:
        self.instruction = info["instruction"]
        self.core = core_instruction(self.instruction).lower()
        self.chosen_groups: set[str] = set()

    def act(self, observation: str, info: dict) -> str:
        actions = info.get("admissible_actions") or []
        page = info.get("page")
        clicks = [a[6:-1] for a in actions if a.startswith("click[")]
        if page != "index" and clicks and self.rng.random() < self.epsilon:
            return f"click[{self.rng.choice(clicks)}]"
        if page == "index":
            words = [w for w in self.core.split() if self.rng.random() >= self.word_dropout]
            return f"search[{' '.join(words or self.core.split())}]"
        tokens = observation.split(SEP)
        if page == "search_results":
            return self._pick_result(tokens, set(clicks))
        if page == "item_page":
            return self._pick_option(tokens, set(clicks))
        return "click[< prev]" if "< prev" in clicks else "click[back to search]"

    def _softmax_choice(self, items: list[Any], scores: list[float]) -> Any:
        if self.temperature <= 0:
            return items[max(range(len(items)), key=scores.__getitem__)]
        m = max(scores)
        weights = [math.exp((s - m) / (100 * self.temperature)) for s in scores]
        return self.rng.choices(items, weights=weights)[0]

    def _pick_result(self, tokens: list[str], clicks: set[str]) -> str:
        """Rank prior (the search engine already sorts by relevance) plus title similarity,
        minus a penalty for prices over the instruction's cap."""
        results = []
        for i in range(len(tokens) - 2):
            if tokens[i].lower() in clicks and re.fullmatch(r"[A-Z0-9]{10}", tokens[i]):
                results.append((tokens[i], tokens[i + 1], tokens[i + 2]))
        if not results:
            return "click[back to search]"
        cap = _price_cap(self.instruction)
        scores = []
        for rank, (_, title, price) in enumerate(results):
            score = fuzz.token_set_ratio(title.lower(), self.core) - 4 * rank
            low = _first_price(price)
            if cap is not None and low is not None and low > cap:
                score -= 40
            scores.append(score)
        asin, _, _ = self._softmax_choice(results, scores)
        self.chosen_groups = set()
        return f"click[{asin.lower()}]"

    def _pick_option(self, tokens: list[str], clicks: set[str]) -> str:
        groups: dict[str, list[str]] = {}
        try:
            start = tokens.index("< Prev") + 1
        except ValueError:
            start = len(tokens)
        current = None
        for tok in tokens[start:]:
            if tok in clicks and current is not None:
                groups[current].append(tok)
            elif tok in ("Description", "Price:") or tok.startswith("Price: "):
                break
            else:
                current = tok
                groups.setdefault(current, [])
        text = self.instruction.lower()
        for name, values in groups.items():
            if not values or name in self.chosen_groups:
                continue
            self.chosen_groups.add(name)
            # a value written in the instruction wins (longest first); else a close fuzzy match
            verbatim = [v for v in values if re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text)]
            if verbatim:
                return f"click[{max(verbatim, key=len)}]"
            scores = [fuzz.token_set_ratio(v, text) for v in values]
            if max(scores) >= 90:
                return f"click[{self._softmax_choice(values, scores)}]"
        return "click[buy now]"


def _price_cap(instruction: str) -> float | None:
    m = re.search(r"price lower than ([\d.]+) dollars", instruction)
    return float(m.group(1)) if m else None


def _first_price(text: str) -> float | None:
    m = re.search(r"\$([\d.]+)", text)
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None
