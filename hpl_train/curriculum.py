"""The 2-D curriculum over group pairs: 3x3 buckets by group length and reward gap ΔR.

Bucket (i, j): i = length bucket (1 = shortest), j = ΔR bucket (1 = largest gap, the easiest
pairs). hpl-gen writes each group pair's buckets as columns (``length_bucket``, ``delta_bucket``,
by the env's thresholds in its registry profile) and records those thresholds in the table's
metadata; the trainer reads them from the data and keeps no per-env copy (it imports no env).
Pairs without the columns (or an ablation's own thresholds) are bucketed here by the config's or
the data's length thresholds (t0, t1, t2): length <= t1 is bucket 1, <= t2 bucket 2, else 3; and
ΔR (1.0, 0.7, 0.4): ΔR >= 0.7 is bucket 1, >= 0.4 bucket 2, else 3. Phases: 1 = B11; 2 = B11 ∪ B12 ∪ B21; 3 = all. Ablations: ``static`` (all buckets from the
start), ``length-only`` and ``difficulty-only`` (phases grow along one axis: 1 -> {1,2} -> all).
"""

from __future__ import annotations

DELTA_THRESHOLDS = (1.0, 0.7, 0.4)  # the paper's; the config's default
MODES = ("hpl", "static", "length-only", "difficulty-only")


def bucket(length: int, delta: float, length_thresholds: tuple[int, ...],
           delta_thresholds: tuple[float, ...] = DELTA_THRESHOLDS) -> tuple[int, int]:
    """(length bucket, ΔR bucket) of a group pair; the length thresholds are the env's (no default)."""
    lb = 1 if length <= length_thresholds[1] else 2 if length <= length_thresholds[2] else 3
    db = 1 if delta >= delta_thresholds[1] else 2 if delta >= delta_thresholds[2] else 3
    return lb, db


def allowed(phase: int, mode: str = "hpl") -> set[tuple[int, int]]:
    every = {(i, j) for i in (1, 2, 3) for j in (1, 2, 3)}
    if mode == "static" or phase >= 3:
        return every
    if mode == "hpl":
        return {(1, 1)} if phase == 1 else {(1, 1), (1, 2), (2, 1)}
    if mode == "length-only":
        return {(i, j) for i, j in every if i <= phase}
    if mode == "difficulty-only":
        return {(i, j) for i, j in every if j <= phase}
    raise ValueError(f"curriculum mode must be one of {MODES}, got {mode!r}")


def phase_at(step: int, total_steps: int, boundaries: tuple[float, float] = (1 / 3, 2 / 3)) -> int:
    """Phase 1..3 at a 0-based optimizer step; boundaries are fractions of the run, rounded to
    whole steps (6 steps with (1/3, 2/3): phases 1,1,2,2,3,3)."""
    b1, b2 = (round(b * total_steps) for b in boundaries)
    return 1 if step < b1 else 2 if step < b2 else 3
