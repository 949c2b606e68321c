"""ALFWorld's built-in agents."""

from __future__ import annotations

import random
import re
from typing import Any


class AlfWorldOracle:
    """Follows the game's expert walkthrough; if a step is not admissible (the walkthrough
    diverged), asks ALFWorld's planner for a new plan from the current state."""

    name = "oracle"

    def __init__(self, seed: int = 0, **_: Any) -> None:
        self.plan: list[str] = []

    def reset(self, env: Any, observation: str, info: dict) -> None:
        self.env = env
        self.plan = env.walkthrough(info["task_id"])
        self.replans = 0

    def act(self, observation: str, info: dict) -> str:
        admissible = info.get("admissible_actions") or []
        if not self.plan or self.plan[0] not in admissible:
            self.plan = self.env.replan()
            self.replans += 1
        return self.plan.pop(0) if self.plan else "look"


_TASK = re.compile(r"(?:put|find|look at|examine|heat|cool|clean)\s+(?:a |an |some |two )?(?:(?:clean|hot|cool|cold) )?"
                   r"(\w+)", re.IGNORECASE)
_RECEP = re.compile(r"\b(?:in|on|under)\s+(?:the\s+)?(\w+)\.?$", re.IGNORECASE)


class AlfWorldHeuristic:
    """Stochastic explorer over admissible actions with a task-aware bias: it favours going to
    unvisited places, taking the task object, cleaning/heating/cooling it when the task says so,
    using a lamp for look-at tasks, and putting the object into the target receptacle."""

    name = "heuristic"

    def __init__(self, seed: int = 0, epsilon: float = 0.2, **_: Any) -> None:
        self.rng = random.Random(seed)
        self.epsilon = epsilon

    def reset(self, env: Any, observation: str, info: dict) -> None:
        task = info.get("instruction", "")
        m = _TASK.search(task)
        self.obj = m.group(1).lower() if m else ""
        r = _RECEP.search(task)
        self.recep = r.group(1).lower() if r else ""
        self.verb = next((v for v in ("clean", "heat", "cool") if v in task), "")
        self.light = "look at" in task or "examine" in task
        self.visited: set[str] = set()

    def act(self, observation: str, info: dict) -> str:
        actions = [a for a in info.get("admissible_actions") or [] if a not in ("help", "inventory", "look")]
        if not actions:
            return "look"
        if self.rng.random() < self.epsilon:
            return self.rng.choice(actions)
        weights = [self._weight(a) for a in actions]
        choice = self.rng.choices(actions, weights=weights)[0]
        if choice.startswith("go to "):
            self.visited.add(choice[6:])
        return choice

    def _weight(self, a: str) -> float:
        w = 1.0
        if a.startswith("take ") and self.obj and a.split()[1].startswith(self.obj):
            w = 40.0
        elif self.verb and a.startswith(self.verb + " ") and self.obj in a:
            w = 60.0
        elif (a.startswith("move ") or a.startswith("put ")) and self.obj in a and self.recep and self.recep in a:
            w = 80.0
        elif self.light and a.startswith("use "):
            w = 50.0
        elif a.startswith("go to "):
            w = 0.3 if a[6:] in self.visited else 3.0
            if self.recep and self.recep in a:
                w *= 2
        elif a.startswith("open "):
            w = 2.0
        elif a.startswith("examine ") or a.startswith("close "):
            w = 0.2
        return w
