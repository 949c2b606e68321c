"""InterCode-SQL's reward on hand-made result sets (expected values worked out by hand)."""

import pytest

from hpl_envs.intercode_sql.reward import sql_reward


def test_both_empty_is_one():
    assert sql_reward([], [])[0] == 1.0


def test_exact_match_in_order():
    rows = [(1, "a"), (2, "b"), (3, "c")]
    assert sql_reward(rows, list(rows))[0] == 1.0


def test_reversed_order_is_negative():
    # tau of a full reversal is -1; IoU 1 -> reward -1.0 (InterCode keeps the sign)
    assert sql_reward([(3,), (2,), (1,)], [(1,), (2,), (3,)])[0] == -1.0


def test_partial_reorder_rounds_to_two_decimals():
    # agent order a,c,b,d vs gold a,b,c,d: 5 concordant, 1 discordant pair -> tau = 4/6; IoU 1
    reward, parts = sql_reward([("a",), ("c",), ("b",), ("d",)], [("a",), ("b",), ("c",), ("d",)])
    assert parts["kendall_tau"] == pytest.approx(2 / 3)
    assert reward == 0.67


def test_duplicates_use_multiset_counts():
    # agent {1:2, 2:1}, gold {1:1, 2:2}: intersection 1+1 = 2, union 2+2 = 4 -> IoU 0.5; tau on [1,2] vs [1,2] = 1
    reward, parts = sql_reward([(1,), (1,), (2,)], [(1,), (2,), (2,)])
    assert parts["iou"] == 0.5 and reward == 0.5


def test_nan_tau_leaves_iou_unrounded():
    # one shared row: tau is NaN -> reward is the raw IoU 1/3, not rounded
    reward, parts = sql_reward([(1,)], [(1,), (2,), (3,)])
    assert parts["kendall_tau"] is None and reward == 1 / 3


def test_rows_compare_as_strings():
    # InterCode stringifies rows: 1 and 1.0 differ, Decimal repr matters
    assert sql_reward([(1,)], [(1.0,)])[0] == 0.0


def test_non_list_observations_score_zero():
    assert sql_reward("Error executing query: boom", [(1,)])[0] == 0.0
    assert sql_reward(None, [])[0] == 0.0
    assert sql_reward([(1,)], "Error executing query: broken gold")[0] == 0.0
    assert sql_reward([], [(1,)])[0] == 0.0


def test_recorded_scoring_without_tau():
    # InterCode's published runs were scored without the tau factor: a reversal scores 1.0 there
    assert sql_reward([(3,), (2,), (1,)], [(1,), (2,), (3,)], kendall_tau=False)[0] == 1.0
    assert sql_reward([("a",), ("b",)], [("a",), ("b",), ("c",)], kendall_tau=False)[0] == 2 / 3


def test_failing_gold_scores_against_an_empty_result():
    # InterCode's get_reward replaces a gold query's error with [] before scoring
    gold_error = "Error executing query: Unknown column 'x' in 'field list'"
    assert sql_reward([], gold_error)[0] == 1.0
    assert sql_reward([(1,)], gold_error)[0] == 0.0
    assert sql_reward("Error executing query: also broken", gold_error)[0] == 0.0
    assert sql_reward([], None)[0] == 1.0  # a gold statement without a result set: [] as well
