"""Uncertainty of evaluation numbers: bootstrap intervals and paired tests over per-task values.

An ``hpl-eval`` number is a mean over tasks (reward, or success as 0/1), so its uncertainty is that
of a mean over a sample of tasks. Both tools here resample or re-sign *tasks*:

- :func:`mean_ci`: percentile bootstrap of the mean (vectorised numpy, :data:`RESAMPLES` resamples,
  seed :data:`SEED`, so the same values always give the same interval). Percentile rather than BCa
  because BCa is undefined when every value is equal (an agent that fails every task) and success
  is 0/1; the coverage test in ``tests/test_compare.py`` checks the nominal rate at n = 100.
- :func:`paired_difference`: run B minus run A on the same tasks: the mean difference, a percentile
  bootstrap interval of it (tasks resampled as pairs) and a two-sided sign-flip permutation p-value
  (under H0 each task's difference is as likely positive as negative). Exact over all sign patterns
  of the non-zero differences when there are at most :data:`EXACT_MAX_NONZERO` of them, else Monte
  Carlo with :data:`PERMUTATIONS` draws and seed :data:`SEED` (p = (1 + hits) / (1 + draws), never 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
PERMUTATIONS = 100_000
EXACT_MAX_NONZERO = 16  # 2**16 sign patterns enumerated exactly
SEED = 0
_CHUNK_CELLS = 4_000_000  # resampled values held at once (32 MB of float64)
METHOD = f"percentile bootstrap over tasks, {RESAMPLES:,} resamples, seed {SEED}"
TEST_NAME = "two-sided paired sign-flip permutation test"


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a flat list of per-task values, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("per-task values must be finite numbers")
    return arr


def bootstrap_means(values: Sequence[float] | np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """Means of ``resamples`` samples drawn with replacement from ``values`` (chunked: bounded memory)."""
    arr = _values(values)
    n = len(arr)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // max(1, n))
    means = np.empty(resamples)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        means[start:stop] = arr[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
            seed: int = SEED) -> list[float] | None:
    """``[low, high]``: percentile bootstrap interval of the mean; ``None`` for no values."""
    arr = _values(values)
    if len(arr) == 0:
        return None
    if np.all(arr == arr[0]):  # every resample has this mean; skip the work and float noise
        return [float(arr[0]), float(arr[0])]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(bootstrap_means(arr, resamples, seed), [alpha, 1.0 - alpha])
    return [float(low), float(high)]


def sign_flip_p_value(differences: Sequence[float] | np.ndarray, permutations: int = PERMUTATIONS,
                      seed: int = SEED) -> tuple[float, bool]:
    """(two-sided p-value of mean(differences) = 0, whether it is exact); 1.0 when all are 0."""
    d = _values(differences)
    d = d[d != 0]  # a zero difference is the same under either sign
    m = len(d)
    if m == 0:
        return 1.0, True
    observed = abs(d.sum())
    tolerance = 1e-9 * max(1.0, float(np.abs(d).sum()))  # sums of the same values in another order
    if m <= EXACT_MAX_NONZERO:
        patterns = np.arange(2**m, dtype=np.int64)[:, None] >> np.arange(m) & 1
        sums = (1 - 2 * patterns) @ d
        return float(np.mean(np.abs(sums) >= observed - tolerance)), True
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // m)
    hits = 0
    for start in range(0, permutations, rows):
        signs = rng.integers(0, 2, size=(min(rows, permutations - start), m), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= observed - tolerance))
    return (1 + hits) / (1 + permutations), False


@dataclass(frozen=True)
class PairedDifference:
    """B minus A over the tasks both runs have."""

    tasks: int
    mean_a: float
    mean_b: float
    difference: float
    ci95: list[float] | None
    p_value: float
    exact: bool

    @property
    def interval_contains_zero(self) -> bool:
        return self.ci95 is None or self.ci95[0] <= 0.0 <= self.ci95[1]

    def as_dict(self) -> dict:
        return asdict(self) | {"interval_contains_zero": self.interval_contains_zero}


def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      resamples: int = RESAMPLES, permutations: int = PERMUTATIONS,
                      seed: int = SEED) -> PairedDifference:
    """Mean of b - a (aligned per task) with its bootstrap interval and sign-flip p-value."""
    va, vb = _values(a), _values(b)
    if len(va) != len(vb):
        raise ValueError(f"paired values need equal lengths, got {len(va)} and {len(vb)}")
    d = vb - va
    p, exact = sign_flip_p_value(d, permutations, seed)
    return PairedDifference(
        tasks=len(d),
        mean_a=float(va.mean()) if len(va) else 0.0,
        mean_b=float(vb.mean()) if len(vb) else 0.0,
        difference=float(d.mean()) if len(d) else 0.0,
        ci95=mean_ci(d, CONFIDENCE, resamples, seed),
        p_value=p,
        exact=exact,
    )
