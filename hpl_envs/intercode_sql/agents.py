"""InterCode-SQL's built-in agents."""

from __future__ import annotations

import random
import re
from typing import Any

import sqlparse

_TABLE_AFTER = re.compile(r"\b(?:FROM|JOIN)\s+`?([A-Za-z_][\w]*)`?", re.IGNORECASE)


def gold_tables(gold: str) -> list[str]:
    """Tables a gold query reads, in first-use order (aliases and subqueries skipped)."""
    seen: list[str] = []
    for name in _TABLE_AFTER.findall(sqlparse.format(gold, strip_comments=True)):
        if name.upper() not in ("SELECT",) and name.lower() not in [s.lower() for s in seen]:
            seen.append(name)
    return seen


class SqlOracle:
    """Explores like a careful person -- SHOW TABLES, DESC each table the answer needs -- then runs
    the gold query and submits. Uses privileged knowledge of the gold SQL."""

    name = "oracle"

    def __init__(self, seed: int = 0, **_: Any) -> None:
        self.plan: list[str] = []

    def reset(self, env: Any, observation: str, info: dict) -> None:
        task = env.task(info["task_id"])
        budget = max(0, env.max_turns - 3)
        self.plan = ["SHOW TABLES"] + [f"DESC {t}" for t in gold_tables(task.gold)[:budget]] + [task.gold, "submit"]

    def act(self, observation: str, info: dict) -> str:
        return self.plan.pop(0) if self.plan else "submit"


class SqlHeuristic:
    """A schema-aware guesser: looks at the tables, then tries simple queries over the table whose
    name or columns best match the question's words, submitting after a result. Stochastic."""

    name = "heuristic"

    def __init__(self, seed: int = 0, epsilon: float = 0.2, **_: Any) -> None:
        self.rng = random.Random(seed)
        self.epsilon = epsilon

    def reset(self, env: Any, observation: str, info: dict) -> None:
        self.question = info["instruction"].lower()
        self.tables: list[str] = []
        self.described: list[str] = []
        self.stage = "tables"

    def act(self, observation: str, info: dict) -> str:
        if self.stage == "tables":
            self.stage = "describe"
            return "SHOW TABLES"
        if self.stage == "describe":
            if not self.tables:
                self.tables = re.findall(r"\('([^']+)',\)", observation) or ["dual"]
                self.rng.shuffle(self.tables)
                self.tables.sort(key=lambda t: -self._overlap(t))
            pending = [t for t in self.tables if t not in self.described]
            if self.described and (not pending or len(self.described) >= 2):
                self.stage = "query"
            else:
                table = pending[0]
                self.described.append(table)
                return f"DESCRIBE {table}"
        if self.stage == "query":
            self.stage = "submit"
            return self._guess()
        return "submit"

    def _overlap(self, name: str) -> int:
        words = set(re.findall(r"[a-z]+", self.question))
        return sum(1 for part in re.findall(r"[a-z]+", name.lower()) if part in words or part + "s" in words)

    def _guess(self) -> str:
        table = max(self.described, key=self._overlap)
        if self.rng.random() < self.epsilon:
            table = self.rng.choice(self.described)
        q = self.question
        if q.startswith("how many") or "number of" in q or "count" in q:
            return f"SELECT COUNT(*) FROM {table}"
        return f"SELECT * FROM {table}"
