"""Group segmenters of the HPL paper: split an expert trajectory of T actions into contiguous groups.

* ``fixed-n:N`` -- N groups of (nearly) equal length;
* ``fixed-k:K`` -- groups of K actions (the last may be shorter);
* ``uncertainty[:pP]`` -- a boundary after each action whose policy entropy exceeds the P-th
  percentile (default 80) of the entropies given (computed over the dataset by the caller);
* ``semantic:POLICY`` -- an LLM (a chat policy spec) returns index groups as JSON (``[[0,1],[2,3],[4,4]]``); see
  :func:`parse_semantic_groups`, which validates the answer (contiguous, covering, in order).

Groups are half-open index ranges ``(start, end)``.
"""

from __future__ import annotations

import json
import re


def parse_spec(spec: str) -> tuple[str, float | str | None]:
    """(kind, argument); for ``semantic:POLICY_SPEC`` the argument is the policy spec string."""
    if spec.strip().startswith("semantic:"):
        policy = spec.strip()[len("semantic:"):]
        if not policy:
            raise ValueError("segmenter semantic needs a policy, e.g. semantic:openai:http://127.0.0.1:8000/v1")
        return "semantic", policy
    if spec.strip() == "semantic":
        raise ValueError("segmenter semantic needs a policy spec: semantic:vllm:MODEL or semantic:openai:URL[#model]")
    m = re.fullmatch(r"(fixed-n|fixed-k|uncertainty|semantic)(?::p?([\d.]+))?", spec.strip())
    if not m:
        raise ValueError(f"unknown segmenter {spec!r}: use fixed-n:N, fixed-k:K, uncertainty[:pP] or semantic")
    kind, arg = m.group(1), m.group(2)
    if kind in ("fixed-n", "fixed-k") and (arg is None or float(arg) < 1 or float(arg) != int(float(arg))):
        raise ValueError(f"segmenter {kind} needs a positive integer, e.g. {kind}:3")
    return kind, float(arg) if arg is not None else None


def fixed_n(length: int, n: int) -> list[tuple[int, int]]:
    n = max(1, min(n, length))
    bounds = [round(i * length / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n) if bounds[i] < bounds[i + 1]]


def fixed_k(length: int, k: int) -> list[tuple[int, int]]:
    return [(i, min(i + k, length)) for i in range(0, length, max(1, k))]


def uncertainty(entropies: list[float], threshold: float) -> list[tuple[int, int]]:
    """End a group after every action whose entropy is above ``threshold``."""
    groups, start = [], 0
    for i, h in enumerate(entropies):
        if h > threshold:
            groups.append((start, i + 1))
            start = i + 1
    if start < len(entropies):
        groups.append((start, len(entropies)))
    return groups


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("inf")
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def parse_semantic_groups(text: str, length: int) -> list[tuple[int, int]] | None:
    """The first JSON list of [start, end] (inclusive) index pairs in ``text``, validated to be
    contiguous and to cover 0..length-1 in order; None when the answer is unusable."""
    for m in re.finditer(r"\[\s*\[.*?\]\s*\]", text, re.DOTALL):
        try:
            data = json.loads(m.group())
        except json.JSONDecodeError:
            continue
        try:
            groups = [(int(g[0]), int(g[-1]) + 1) for g in data]
        except (TypeError, ValueError, IndexError):
            continue
        if not groups or groups[0][0] != 0 or groups[-1][1] != length:
            continue
        if any(a >= b for a, b in groups) or any(groups[i][1] != groups[i + 1][0] for i in range(len(groups) - 1)):
            continue
        return groups
    return None


SEMANTIC_PROMPT = """Here is the trajectory of an agent solving a task, one numbered action per line, \
each followed by what the agent observed.
Split the trajectory into contiguous groups of actions, each group achieving one sub-goal.
Answer with JSON only: a list of [first, last] index pairs (inclusive) that covers 0..{last} in order,
for example [[0,1],[2,3],[4,4]].

Task: {task}
{steps}"""


async def semantic_groups(policy, task: str, actions: list[str], observations: list[str], *, fallback_k: int = 3,
                          max_tokens: int = 256, obs_chars: int = 200) -> tuple[list[tuple[int, int]], bool]:
    """Ask a chat policy (``hpl_data.policies``) for the groups of an expert trajectory.

    Returns (groups, fell_back): an answer that is not a valid contiguous cover is replaced by
    Fixed-K with ``fallback_k`` and flagged, so callers can count fallbacks.
    """
    from hpl_data.policies import PolicyError, SamplingParams

    lines = [f"{i}. {a}\n   -> {o[:obs_chars]}" for i, (a, o) in enumerate(zip(actions, observations))]
    prompt = SEMANTIC_PROMPT.format(last=len(actions) - 1, task=task, steps="\n".join(lines))
    try:
        comp = (await policy.chat([{"role": "user", "content": prompt}],
                                  SamplingParams(temperature=0.0, max_tokens=max_tokens, top_logprobs=0)))[0]
        groups = parse_semantic_groups(comp.text, len(actions))
    except PolicyError:
        groups = None
    if groups is None:
        return fixed_k(len(actions), fallback_k), True
    return groups, False
