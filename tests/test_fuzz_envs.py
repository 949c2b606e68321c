"""Every env survives hostile actions (benchmarks/bench_fuzz.py, fewer actions): no exception out
of ``step`` or ``parse_react``, 1 MB inputs included, and no step anywhere near a hang."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_fuzz import run_env  # noqa: E402

# Far above any step seen in the fuzz run (max ~0.1 s), far below what a quadratic parser takes
# on a 1 MB input (minutes): a hang detector, not a timing test.
HANG_S = 10.0


@pytest.mark.parametrize("env_name,n", [
    ("webshop", 3000),
    pytest.param("alfworld", 1000, marks=pytest.mark.slow),
    pytest.param("intercode-sql", 2000, marks=pytest.mark.slow),
])
def test_fuzzed_actions_never_crash_or_hang(env_name, n):
    if env_name == "alfworld":
        pytest.importorskip("textworld")
    r = run_env(env_name, n, seed=1)
    assert r["steps"] == n
    assert r["crashes"] == 0 and r["max_step_s"] < HANG_S and r["max_parse_s"] < HANG_S, r["examples"]
