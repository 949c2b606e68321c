"""InterCode-SQL's reward (``intercode/envs/sql/sql_env.py:get_reward``), reimplemented.

* Both results are lists of row tuples, compared as strings (``str(row)``).
* IoU of the two multisets: |A ∩ B| / |A ∪ B| with per-row min/max counts. Both empty -> 1.
* If they share rows, the IoU is multiplied by Kendall's tau (scipy, tau-b) between the shared
  rows in the agent's order and in the gold order, and rounded to 2 decimals; a NaN tau (e.g. one
  shared row) leaves the IoU unscaled and unrounded. Tau can be negative, and so can the reward.
* An agent observation that is not a list of rows (an error message, no result set) scores 0.
* A gold query that fails (or returns no result set) counts as an empty result, as in InterCode's
  ``get_reward``, which overwrites the gold error with ``[]`` before scoring: an agent result of
  ``[]`` then scores 1 and any rows score 0.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

from scipy.stats import kendalltau


def _ordered_intersection(rows: list[str], intersection: Counter) -> list[str]:
    remaining = Counter(intersection)
    out = []
    for r in rows:
        if remaining.get(r, 0) > 0:
            remaining[r] -= 1
            out.append(r)
    return out


def sql_reward(agent_obs: Any, gold_obs: Any, kendall_tau: bool = True) -> tuple[float, dict]:
    """(reward, parts) for the agent's last result against the gold result.

    ``kendall_tau=False`` returns the plain IoU: InterCode's published runs were scored that way
    (no negative or tau-rounded rewards occur in them), although its released code applies tau."""
    if not isinstance(gold_obs, list):
        gold_obs = []  # InterCode: a failing gold query is scored as an empty result
    if not isinstance(agent_obs, list):
        return 0.0, {"iou": 0.0, "kendall_tau": None}
    agent = [str(x) for x in agent_obs]
    gold = [str(x) for x in gold_obs]
    ca, cg = Counter(agent), Counter(gold)
    inter = ca & cg
    union = ca | cg
    if not union:
        return 1.0, {"iou": 1.0, "kendall_tau": None}
    iou = sum(inter.values()) / sum(union.values())
    reward, tau = iou, None
    if inter and kendall_tau:
        a = _ordered_intersection(agent, inter)
        g = _ordered_intersection(gold, inter)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one shared row: scipy warns and returns NaN, as expected
            tau = kendalltau(a, g, nan_policy="omit").statistic
        if not math.isnan(tau) and isinstance(tau, float):
            reward = round(tau * iou, 2)
    return float(reward), {"iou": iou, "kendall_tau": None if tau is None or math.isnan(tau) else float(tau)}
