import pytest

from hpl_data.segmenters import fixed_k, fixed_n, parse_semantic_groups, parse_spec, percentile, uncertainty


def test_fixed_n_and_k():
    assert fixed_n(7, 3) == [(0, 2), (2, 5), (5, 7)]
    assert fixed_n(2, 5) == [(0, 1), (1, 2)]
    assert fixed_k(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert fixed_k(3, 3) == [(0, 3)]


def test_uncertainty_boundaries():
    h = [0.1, 2.0, 0.2, 0.3, 3.0, 0.1]
    assert uncertainty(h, percentile(h, 80)) == [(0, 5), (5, 6)]
    assert uncertainty(h, 1.0) == [(0, 2), (2, 5), (5, 6)]
    assert percentile([1, 2, 3, 4, 5], 50) == 3


@pytest.mark.parametrize("text,groups", [
    ("[[0,1],[2,3],[4,4]]", [(0, 2), (2, 4), (4, 5)]),
    ("Sure! Groups: [[0, 2], [3, 4]] done", [(0, 3), (3, 5)]),
    ("[[0,1],[3,4]]", None),          # gap
    ("[[0,1],[1,4]]", None),          # overlap
    ("[[0,3]]", None),                # does not cover
    ("[[1,4]]", None),                # does not start at 0
    ("no json here", None),
    ("[[0,'a']]", None),
])
def test_semantic_parser(text, groups):
    assert parse_semantic_groups(text, 5) == groups


def test_spec_parsing():
    assert parse_spec("fixed-k:3") == ("fixed-k", 3.0)
    assert parse_spec("uncertainty:p80") == ("uncertainty", 80.0)
    assert parse_spec("uncertainty") == ("uncertainty", None)
    assert parse_spec("semantic:openai:http://h:1/v1#m") == ("semantic", "openai:http://h:1/v1#m")
    for bad in ("fixed-k", "fixed-n:0", "fixed-k:1.5", "random:3", "semantic", "semantic:"):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_adaptive_mc_accounting_and_agreement(tmp_path):
    """Adaptive MC draws a prefix of the same seeded rollouts: its saved count closes the books
    against a fixed-M run, and it keeps (almost) the same pairs in the same ΔR buckets."""
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    runs = {}
    for adaptive in (False, True):
        out = tmp_path / str(adaptive)
        p = subprocess.run([sys.executable, "-m", "hpl_data.cli_gen", "--no-progress", "--env", "webshop", "--limit",
                            "8", "--levels", "step,group", "--mc-rollouts", "5", "--mc-min-rollouts", "2",
                            *(["--mc-adaptive"] if adaptive else []), "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
        rows = [r for lv in ("step", "group") for r in pq.read_table(out / f"{lv}_pairs.parquet").to_pylist()]
        counters = json.loads((out / "manifest.json").read_text())["counters"]
        runs[adaptive] = (counters, {(r["task_id"], r["level"], r["group_start"]): r for r in rows})
    (cf, fixed), (ca, adapt) = runs[False], runs[True]
    assert cf["rollouts"] == ca["rollouts"] + ca["rollouts_saved"] and ca["rollouts_saved"] > 0
    assert all(2 <= r["n_rollouts"] <= 5 for r in adapt.values()) and any(r["n_rollouts"] < 5 for r in adapt.values())
    both = set(adapt) & set(fixed)
    assert len(both) >= 0.9 * len(fixed)  # the kept pairs (sign of ΔR) barely change
    assert sum(adapt[k]["bucket"] == fixed[k]["bucket"] for k in both) >= 0.9 * len(both)
