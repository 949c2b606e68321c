"""BM25 product search that behaves like WebShop's pyserini/Lucene searcher, without Java.

WebShop indexes each product's ``contents`` with Anserini's default English analyzer and ranks
with Lucene BM25 (k1 = 0.9, b = 0.4), returning the top 50 hits; Lucene breaks score ties by
internal doc id, i.e. catalog order. Here: the analysis chain is reproduced in Python
(UAX#29-style word breaking, English possessive removal, lower-casing, Lucene's 33 English stop
words, Porter stemming via PyStemmer), scoring is ``bm25s`` with ``method="lucene"``, and ties
go to the lower catalog index. Known difference: Lucene stores document lengths in one byte
(lossy for documents longer than 24 terms); bm25s uses exact lengths, so near-tied scores can
order differently. ``benchmarks/bench_webshop_search_fidelity.py`` measures the overlap.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from hpl_envs.data import cache_dir

K1, B = 0.9, 0.4
SEARCH_RETURN_N = 50

LUCENE_ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their"
    " then there these they this to was will with".split()
)
_LETTER = r"[^\W\d_]"
_DIGIT = r"\d"
# A word is a run of word characters, joined across ' . ’ (letters or digits on both sides),
# ':' (letters on both sides) and ',' ';' (digits on both sides), as UAX#29 word breaking does.
_TOKEN = re.compile(
    rf"\w+(?:(?:(?<={_LETTER})[.'’\u2018:](?={_LETTER})|(?<={_DIGIT})[.'’\u2018,;](?={_DIGIT}))\w+)*"
)
_POSSESSIVE = re.compile(r"['’\uff07][sS]$")
_STEMMER = Stemmer.Stemmer("porter")


def analyze(text: str) -> list[str]:
    """Lucene-like English analysis: tokens after possessive, lower-case, stop and stem."""
    tokens = []
    for m in _TOKEN.finditer(text):
        tok = _POSSESSIVE.sub("", m.group()).lower()
        if tok and tok not in LUCENE_ENGLISH_STOP_WORDS:
            tokens.append(tok)
    return _STEMMER.stemWords(tokens)


class SearchEngine:
    """Top-k BM25 over a list of documents; results are document indexes."""

    def __init__(self, retriever: bm25s.BM25) -> None:
        self.retriever = retriever
        self.vocab = retriever.vocab_dict
        self.num_docs = int(retriever.scores["num_docs"])

    @classmethod
    def build(cls, contents: list[str]) -> SearchEngine:
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        retriever.index([analyze(c) for c in contents], show_progress=False)
        return cls(retriever)

    @classmethod
    def load_or_build(cls, contents_fn, key: str) -> SearchEngine:
        """Load a saved index (memory-mapped) keyed by the catalog digest, else build and save."""
        path = Path(cache_dir()) / f"webshop-bm25-{key}"
        if (path / "params.index.json").exists():
            try:
                return cls(bm25s.BM25.load(str(path), mmap=True))
            except Exception:  # noqa: BLE001 - a torn cache is rebuilt
                pass
        engine = cls.build(contents_fn())
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        engine.retriever.save(str(tmp))
        try:
            tmp.rename(path)
        except OSError:  # another process saved it first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
        return engine

    def scores(self, query: str) -> np.ndarray:
        ids = [self.vocab[t] for t in analyze(query) if t in self.vocab]
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return self.retriever.get_scores(ids)

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Indexes of the top ``k`` matching documents, best first, ties by lower index."""
        scores = self.scores(query)
        if len(scores) > 4 * k:
            kth = np.partition(scores, len(scores) - k)[len(scores) - k]
            cand = np.nonzero(scores >= max(kth, np.float32(1e-30)))[0]
        else:
            cand = np.nonzero(scores > 0)[0]
        order = cand[np.argsort(-scores[cand], kind="stable")]
        order = order[scores[order] > 0]
        return order[:k].tolist()
