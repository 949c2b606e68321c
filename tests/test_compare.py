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


def compare(capsys, *args) -> tuple[int, str, str]:
    """``hpl-eval compare`` in-process (the CLI boundary included): (exit status, stdout, stderr)."""
    from hpl_data import cli_eval

    code = cli_eval.main(["compare", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def difference_rows(out: str) -> dict[tuple[str, str], str]:
    """{(run, metric): row text} of the printed paired-differences table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[2] in ("reward", "success"):
            rows[(cells[0], cells[2])] = line
    return rows


def test_compare_heuristic_and_random_on_the_same_tasks(runs, capsys, tmp_path):
    from hpl_data.compare import load, paired_comparisons

    code, out, err = compare(capsys, runs / "s.json", runs / "random.json", "--png", tmp_path / "cmp.png")
    assert code == 0, err
    [c], notes = paired_comparisons(load([runs / "s.json", runs / "random.json"]))
    assert not notes and c.reward.tasks == TASKS and not c.only_in_reference and not c.only_in_run
    assert c.reward.difference < 0 and c.reward.ci95[1] < 0 and c.reward.p_value < 0.05
    assert c.success.difference < 0 and c.success.p_value < 0.05
    rows = difference_rows(out)
    reward_row = rows[("random", "reward")]
    assert f"{c.reward.difference:+.4f} [{c.reward.ci95[0]:+.3f}, {c.reward.ci95[1]:+.3f}]" in reward_row
    for metric in ("reward", "success"):
        cells = [cell.strip() for cell in rows[("random", metric)].strip("│ ").split("│")]
        assert float(cells[4].rstrip("*")) < 0.05 and cells[5] == "no", cells  # the interval excludes 0
    assert "sign-flip permutation test" in out
    assert (tmp_path / "cmp.png").stat().st_size > 20_000


def test_compare_a_run_with_itself_gives_zero_and_p_one(runs, capsys):
    code, out, err = compare(capsys, runs / "s.json", runs / "s.json")
    assert code == 0, err
    rows = difference_rows(out)
    assert len(rows) == 2
    for row in rows.values():
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[3] == "+0.0000 [+0.000, +0.000]" and cells[4] == "1" and cells[5] == "yes"


def test_compare_other_task_panels_refused_then_paired_on_common_tasks(runs, capsys):
    """A 90-task run: another protocol (task list), so refused in one line; allowed, it is paired on
    the 90 common tasks and the 10 others are named."""
    from hpl_data import cli_eval

    assert cli_eval.main(["--env", "webshop", "--agent", "random", "--split", "test", "--limit", "90",
                          "--out", str(runs / "random90.json"), "--quiet"]) == 0
    capsys.readouterr()
    code, out, err = compare(capsys, runs / "s.json", runs / "random90.json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "task_count: 100 vs 90" in err and "--allow-protocol-mismatch" in err
    code, out, err = compare(capsys, runs / "s.json", runs / "random90.json", "--allow-protocol-mismatch")
    assert code == 0, err
    assert "protocol differs for webshop/test" in out and "task_count: 100 vs 90" in out
    assert all(row.split("│")[2].strip() == "90" for row in difference_rows(out).values())
    ids = [e["task_id"] for e in json.loads((runs / "s.json").read_text())["per_episode"]][90:]
    assert f"10 task ids only in heuristic (not paired): {', '.join(ids)}" in out


def test_compare_reads_per_task_results_of_a_multi_env_summary_from_parquet(runs, capsys):
    """A directory's summary.json has no per_episode: the trajectories Parquet beside it is used."""
    from hpl_data.compare import load

    run = json.loads((runs / "s.json").read_text())
    del run["per_episode"]
    (runs / "summary.json").write_text(json.dumps({"agent": "heuristic", "runs": [run]}))
    from_json, from_parquet = (load([runs / name])[0]["tasks"][0] for name in ("s.json", "summary.json"))
    assert from_parquet == from_json and len(from_parquet.rewards) == TASKS
    code, out, err = compare(capsys, runs / "summary.json", runs / "random.json")
    assert code == 0, err
    assert len(difference_rows(out)) == 2
    (runs / "old.json").write_text(json.dumps(run | {"trajectories": "gone.parquet"}))  # no per-task results
    code, out, err = compare(capsys, runs / "s.json", runs / "old.json")
    assert code == 0 and "no per-task results in heuristic (old)" in out and not difference_rows(out)


SUMMARY = '{"env": "webshop", "split": "test", "episodes": 1, "avg_reward": 0.5, "success_rate": 0, "per_episode": PER_EPISODE}'


@pytest.mark.parametrize("content, message", [
    ("{broken", "not a readable hpl-eval JSON"),
    ('{"env": "webshop"}', "not an hpl-eval summary"),
    ("[1, 2]", "not an hpl-eval summary"),
    ('{"runs": 5}', "not an hpl-eval summary"),
    ('{"env": "webshop", "avg_reward": 0.5}', "needs avg_reward, env, episodes, split, success_rate"),
    (SUMMARY.replace("PER_EPISODE", '[{"task_id": "1", "reward": NaN}]'), "not a finite number"),
    (SUMMARY.replace("PER_EPISODE", '[{"task_id": "1"}]'), "without task_id, reward and won"),
])
def test_compare_bad_input_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.json").write_text(content)
    code, out, err = compare(capsys, tmp_path / "bad.json")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_compare_duplicate_task_is_one_line(runs, tmp_path, capsys):
    run = json.loads((runs / "s.json").read_text())
    run["per_episode"].append(run["per_episode"][0])
    (tmp_path / "dup.json").write_text(json.dumps(run))
    code, out, err = compare(capsys, runs / "s.json", tmp_path / "dup.json")
    assert code == 2 and "appears twice" in err and len(err.strip().splitlines()) == 1


def test_compare_runs_without_common_tasks_says_so(runs, tmp_path, capsys):
    run = json.loads((runs / "s.json").read_text())
    for e in run["per_episode"]:
        e["task_id"] = f"other-{e['task_id']}"
    (tmp_path / "other.json").write_text(json.dumps(run))
    code, out, err = compare(capsys, runs / "s.json", tmp_path / "other.json")
    assert code == 0, err
    assert "have no task id in common; nothing to pair" in out and not difference_rows(out)
