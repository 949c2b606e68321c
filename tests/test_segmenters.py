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
