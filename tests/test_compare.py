"""Uncertainty in evaluation: the statistics against known cases and scipy, the intervals in
``hpl-eval``'s summary, and ``hpl-eval compare``'s paired differences on real WebShop runs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hpl_data.stats import METHOD, bootstrap_means, mean_ci, paired_difference, sign_flip_p_value

TASKS = 100


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A heuristic and a random agent on the same 100 WebShop test tasks, each run once: the
    heuristic through the CLI as a user types it (the CLI contract), the random one in-process."""
    from hpl_data import cli_eval

    out = tmp_path_factory.mktemp("runs")
    p = subprocess.run([sys.executable, "-m", "hpl_data.cli_eval", "--env", "webshop", "--agent", "heuristic",
                        "--split", "test", "--limit", str(TASKS), "--out", str(out / "s.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "avg reward [95% CI]" in p.stdout and METHOD in p.stdout
    code = cli_eval.main(["--env", "webshop", "--agent", "random", "--split", "test", "--limit", str(TASKS),
                          "--out", str(out / "random.json"), "--quiet"])
    assert code == 0
    return out


def test_summary_has_intervals_overall_and_per_task_type(runs):
    s = json.loads((runs / "s.json").read_text())
    assert s["episodes"] == TASKS and s["ci95_method"] == METHOD
    per_episode = s["per_episode"]
    groups = [("all", s, per_episode)] + [(t, v, [e for e in per_episode if e["task_type"] == t])
                                          for t, v in s["by_task_type"].items()]
    for name, summary, episodes in groups:
        for field, values in (("avg_reward", [e["reward"] for e in episodes]),
                              ("success_rate", [float(e["success"]) for e in episodes])):
            low, high = summary[f"{field}_ci95"]
            assert summary[field] == pytest.approx(np.mean(values)), (name, field)
            assert low <= summary[field] <= high, (name, field)
            assert [low, high] == mean_ci(values), (name, field)  # fixed seed: reproducible
    # 100 heuristic episodes: a real spread, so a real interval (neither a point nor all of [0, 1])
    low, high = s["avg_reward_ci95"]
    assert 0.02 < high - low < 0.3


def test_bootstrap_interval_covers_the_true_mean_at_its_nominal_rate():
    """Reward-like values (half zeros, the rest uniform; mean 0.25): 400 samples of 100 tasks."""
    rng = np.random.default_rng(1)
    trials, covered = 400, 0
    for _ in range(trials):
        values = np.where(rng.random(TASKS) < 0.5, 0.0, rng.random(TASKS))
        low, high = mean_ci(values, resamples=2_000)
        covered += low <= 0.25 <= high
    assert 0.92 <= covered / trials <= 0.98, covered / trials


def test_bootstrap_interval_agrees_with_scipy():
    values = np.random.default_rng(2).beta(0.5, 1.5, size=80)
    ours = mean_ci(values)
    theirs = scipy_stats.bootstrap((values,), np.mean, confidence_level=0.95, n_resamples=10_000,
                                   method="percentile", random_state=np.random.default_rng(3)).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.006)


def test_interval_edge_cases():
    assert mean_ci([]) is None
    assert mean_ci([0.0] * 50) == [0.0, 0.0] and mean_ci([1.0]) == [1.0, 1.0]
    assert len(bootstrap_means(np.arange(5_000.0), resamples=3_000)) == 3_000  # chunked, bounded memory
    for bad in ([0.5, float("nan")], [[0.1, 0.2]]):
        with pytest.raises(ValueError):
            mean_ci(bad)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([0.1, 0.2], [0.3])


def test_sign_flip_p_value_matches_scipy_exact_and_monte_carlo():
    def scipy_p(d):
        return scipy_stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=100_000,
                                            random_state=np.random.default_rng(5)).pvalue

    rng = np.random.default_rng(4)
    small = rng.normal(0.3, 1.0, size=12)  # 4,096 sign patterns: both sides exact
    p, exact = sign_flip_p_value(small)
    assert exact and p == pytest.approx(scipy_p(small), rel=1e-9)
    large = rng.normal(0.25, 1.0, size=60)  # Monte Carlo on both sides
    p, exact = sign_flip_p_value(large)
    assert not exact and 0.001 < p < 0.5 and p == pytest.approx(scipy_p(large), abs=0.006)
    assert sign_flip_p_value(np.zeros(30)) == (1.0, True)


def test_paired_difference_of_a_run_with_itself_is_zero_with_p_one():
    values = np.random.default_rng(6).random(TASKS)
    same = paired_difference(values, values)
    assert same.difference == 0.0 and same.ci95 == [0.0, 0.0] and same.p_value == 1.0
    assert same.interval_contains_zero
    shifted = paired_difference(values, np.clip(values + 0.2, 0, 1))
    assert shifted.ci95[0] > 0 and shifted.p_value < 0.001 and not shifted.interval_contains_zero
