"""Search: the analyzer against Lucene's own output, Lucene's length encoding, ranking rules."""

import json
from pathlib import Path

import numpy as np
import pytest

from hpl_envs.webshop.search import SearchEngine, analyze, lucene_norm_length

CASES = json.loads((Path(__file__).parent / "fixtures" / "lucene_analyzer_cases.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:30] for c in CASES])
def test_analyzer_matches_lucene(case):
    """Recorded with Anserini 0.22.1's DefaultEnglishAnalyzer (the analyzer of WebShop's index)."""
    assert analyze(case["text"]) == case["lucene"]


def test_lucene_norm_length_encoding():
    # SmallFloat.intToByte4 then byte4ToInt, worked by hand: exact below 24, 3 mantissa bits above
    lengths = np.array([0, 1, 23, 24, 25, 30, 40, 100, 300])
    assert lucene_norm_length(lengths).tolist() == [0, 1, 23, 24, 25, 30, 40, 96, 280]


def test_ranking_rules():
    engine = SearchEngine.build(["red shoe", "red shoe", "blue shoe", "red red shoe lace", "hat"])
    hits = engine.search("red shoe", 10)
    assert hits[:2] == [0, 1] or hits[0] == 3  # equal scores keep catalog order
    scores = engine.scores("red shoe")
    assert scores[0] == scores[1] and hits.index(0) < hits.index(1)
    assert 4 not in hits  # non-matching documents are not results
    assert engine.search("zzz", 10) == [] and engine.search("", 10) == []
    # a repeated query term counts twice, as Anserini's bag-of-words query boosts it
    assert engine.scores("red red")[0] == pytest.approx(2 * engine.scores("red")[0])


def test_ties_follow_the_docid_order_pyserini_sorts_by():
    engine = SearchEngine.build(["red shoe"] * 4 + ["red red shoe"])
    assert engine.search("red shoe", 3)[0] == 4 and engine.search("red shoe", 3)[1:] == [0, 1]
    engine.tie_rank = np.array([3, 0, 2, 1, 4])  # docids' sort order: doc 1, 3, 2, 0
    assert engine.search("red shoe", 10) == [4, 1, 3, 2, 0]
    assert engine.search("red shoe", 3) == [4, 1, 3]  # the cut-off follows the same order


SHIRT_QUERY = ("find me machine wash men's dress shirts with cotton spandex, classic fit, short sleeve with "
               "color: delft, and size: 2x, and price lower than 70.00 dollars")


@pytest.mark.parametrize(("query", "position", "asin"), [
    ("0.17 oz ca perfume", 22, "B00HWHS3ZS"), ("02navy colour shorts", 29, "B07WMMYB6G"),
    # 21 terms: summed in float32 term by term these two swap; Lucene sums in a double, rounds once
    (SHIRT_QUERY, 47, "B07T3VMGDG"), (SHIRT_QUERY, 48, "B09P39QN2W")])
def test_tied_results_in_the_original_indexs_order(webshop_env, query, position, asin):
    """Hits tied (or nearly) in score, recorded from WebShop's own Lucene index through pyserini 0.22.1."""
    hits = webshop_env.shared.search.search(query, 50)
    assert webshop_env.shared.catalog.asin(hits[position]) == asin


def test_fast_word_breaking_gives_the_unicode_rules_tokens():
    """analyze() reads ASCII words with the stdlib engine and only the words holding non-ASCII
    characters with the full Unicode pattern; every character in the contexts that matter (joins
    between letters and digits, underscores, marks, emoji sequences) must give _TOKEN's tokens."""
    from hpl_envs.webshop.search import _TOKEN, _term

    def reference(text: str) -> list[str]:
        return [t for t in map(_term, _TOKEN.findall(text)) if t]

    chars = [chr(c) for c in range(0x80, 0x30000, 9) if not 0xD800 <= c < 0xE000]
    texts = [f"Ab{c}cd 1{c}2 {c}x __{c} x_{c}é {c}\u0301 ❤{c}\ufe0f WOMEN{c}S" for c in chars]
    texts += ["Don’t stop: 3,5 ‘x’ ＆ a：b 1⁄2 l'eau D'ISSEY's 6.76 — 【NEW】 ®™ 👍🏽 👨\u200d👩 中文 ひら", "a_b __ _a 1_2"]
    for text in texts:
        assert analyze(text) == reference(text), text


def test_parallel_analysis_builds_the_same_index():
    from hpl_envs.webshop import search

    texts = [f"red shoe {i % 7} size {i % 11}" for i in range(3 * 500)] + ["blue hat", "Ünïcode café ❤️"] * 5
    old = search.PARALLEL_CHUNK
    search.PARALLEL_CHUNK = 500  # four chunks: over two worker processes
    try:
        parallel = search.analyze_corpus(texts, processes=2)
    finally:
        search.PARALLEL_CHUNK = old
    single = search.analyze_corpus(texts, processes=1)
    assert parallel[0] == single[0]  # same vocabulary, same term ids
    a, b = search.lucene_score_matrix(*parallel), search.lucene_score_matrix(*single)
    assert all(np.array_equal(a[k], b[k]) for k in ("data", "indices", "indptr"))


def test_mapped_vocab_finds_every_term_and_nothing_else(tmp_path):
    from hpl_envs.webshop.search import MappedVocab

    vocab = {"shoe": 0, "red": 1, "café": 2, "❤": 3, "a": 4, "l'eau": 5}
    MappedVocab.write(tmp_path, vocab)
    mapped = MappedVocab(tmp_path)
    assert len(mapped) == 6 and {t: mapped.get(t) for t in vocab} == vocab
    assert [mapped.get(t) for t in ("", "sho", "shoes", "cafe", "a" * 100, "zzz")] == [None] * 6
