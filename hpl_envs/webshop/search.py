"""BM25 product search that behaves like WebShop's pyserini/Lucene searcher, without Java.

WebShop indexes each product's ``contents`` with Anserini's default English analyzer and ranks
with Lucene BM25 (k1 = 0.9, b = 0.4), returning the top 50 hits. Here: the analysis chain is reproduced in Python
(UAX#29-style word breaking, English possessive removal, lower-casing, Lucene's 33 English stop
words, Porter stemming as Lucene's PorterStemmer via NLTK), the term-document matrix is Lucene's BM25 (float32,
document lengths encoded in one byte as Lucene stores them) queried through ``bm25s``. Exact score ties
are broken as pyserini's ``LuceneSearcher`` (Anserini's ``SimpleSearcher``) breaks them: it sorts
hits by score, then by the collection docid (the ASIN, ascending), both when it picks the top k
and when it orders them, so the rule holds for any index however it was built. ``tie_rank`` holds
each document's rank in that order; without it ties go to the lower document index.
``benchmarks/bench_webshop_search_fidelity.py`` measures the agreement with the original index.
"""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import os
import re
import shutil
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import bm25s
import numpy as np
import regex
import scipy.sparse

from hpl_envs.data import cache_dir
from hpl_envs.webshop.catalog import Catalog, build_lock

K1, B = 0.9, 0.4
INDEX_VERSION = 3  # bump when analysis or scoring changes: cached indexes are keyed by it
SEARCH_RETURN_N = 50

LUCENE_ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their"
    " then there these they this to was will with".split()
)
_LETTER = r"[^\W\d_]"
_DIGIT = r"\d"
# Symbols StandardTokenizer emits as one-character tokens (emoji, ®, ™, ★, ...): Extended
# Pictographic plus these other symbols, found by running Lucene 9.5's analyzer on every symbol
# and punctuation character; each may carry a variation selector / ZWJ sequence.
_LUCENE_EXTRA_SYMBOLS = "\u2388\u24B6-\u24C1\u24C3-\u24E9\u2605\u2607-\u260D\u260F-\u2610\u2612\u2616-\u2617\u2619-\u261C\u261E-\u261F\u2621\u2624-\u2625\u2627-\u2629\u262B-\u262D\u2630-\u2637\u263B-\u263F\u2641\u2643-\u2647\u2654-\u265E\u2661-\u2662\u2664\u2667\u2669-\u267A\u267C-\u267D\u2680-\u2685\u2690-\u2691\u2698\u269A\u269D-\u269F\u26A2-\u26A6\u26A8-\u26A9\u26AC-\u26AF\u26B2-\u26BC\u26BF-\u26C3\u26C6-\u26C7\u26C9-\u26CD\u26D0\u26D2\u26D5-\u26E8\u26EB-\u26EF\u26F6\u26FB-\u26FC\u26FE-\u2701\u2703-\u2704\u270E\u2710-\u2711\u2765-\u2767\U0001F000-\U0001F003\U0001F005-\U0001F02B\U0001F030-\U0001F093\U0001F0A0-\U0001F0AE\U0001F0B1-\U0001F0BF\U0001F0C1-\U0001F0CE\U0001F0D1-\U0001F0F5\U0001F10D-\U0001F10F\U0001F12F-\U0001F149\U0001F150-\U0001F169\U0001F16C-\U0001F16F\U0001F172-\U0001F17D\U0001F180-\U0001F189\U0001F1AD\U0001F200\U0001F260-\U0001F265\U0001F322-\U0001F323\U0001F394-\U0001F395\U0001F398\U0001F39C-\U0001F39D\U0001F3F1-\U0001F3F2\U0001F3F6\U0001F3FB-\U0001F3FF\U0001F4FE\U0001F546-\U0001F548\U0001F54F\U0001F568-\U0001F56E\U0001F571-\U0001F572\U0001F57B-\U0001F586\U0001F588-\U0001F589\U0001F58E-\U0001F58F\U0001F591-\U0001F594\U0001F597-\U0001F5A3\U0001F5A6-\U0001F5A7\U0001F5A9-\U0001F5B0\U0001F5B3-\U0001F5BB\U0001F5BD-\U0001F5C1\U0001F5C5-\U0001F5D0\U0001F5D4-\U0001F5DB\U0001F5DF-\U0001F5E0\U0001F5E2\U0001F5E4-\U0001F5E7\U0001F5E9-\U0001F5EE\U0001F5F0-\U0001F5F2\U0001F5F4-\U0001F5F9\U0001F6C6-\U0001F6CA\U0001F6D3-\U0001F6D4\U0001F6E6-\U0001F6E8\U0001F6EA\U0001F6F1-\U0001F6F2\U0001F7D5-\U0001F7D8\U0001F8B0-\U0001F8B1\U0001FA00-\U0001FA53\U0001FA60-\U0001FA6D"
_SYMBOL = r"[\p{Extended_Pictographic}" + _LUCENE_EXTRA_SYMBOLS + "]"
_IDEOGRAPH = r"[\p{Han}\p{Hiragana}]"  # one token per character, as Lucene's <IDEOGRAPHIC>
# A word is a run of word characters, joined across ' . ’ (letters or digits on both sides),
# ':' (letters on both sides) and ',' ';' '⁄' (digits on both sides), as UAX#29 word breaking does;
# a run of underscores alone is not a word.
_TOKEN = regex.compile(
    rf"{_SYMBOL}(?:\uFE0F|[\U0001F3FB-\U0001F3FF])*(?:\u200D{_SYMBOL}\uFE0F?)*"
    rf"|{_IDEOGRAPH}"
    rf"|(?!_+(?!\w)|\p{{Grapheme_Extend}})(?:(?!{_IDEOGRAPH})\w)+(?:(?:(?<={_LETTER})[.'’\u2018:\uFF1A\u00B7](?={_LETTER})"
    rf"|(?<={_DIGIT})[.'’\u2018,;\u2044](?={_DIGIT}))(?:(?!{_IDEOGRAPH})\w)+)*"
)
# The same word breaking on ASCII text, lower-cased first (lower-casing moves no ASCII character
# between classes): the stdlib engine runs it ~7x faster than ``_TOKEN`` and most texts are ASCII.
_ASCII_TOKEN = re.compile(r"(?!_+(?!\w))\w+(?:(?:(?<=[a-z])[.':](?=[a-z])|(?<=[0-9])[.',;](?=[0-9]))\w+)*", re.ASCII)
_POSSESSIVE = re.compile(r"['’\uff07][sS]$")


def _porter_stemmer_class() -> type:
    """NLTK's ``PorterStemmer`` without running NLTK's package ``__init__``, which imports all of NLTK
    (scipy.stats too, via nltk.metrics): ~1.3 s of the ~2.3 s import of this module, paid by every
    spawned WebShop worker, for one pure-Python class. The stemmer's modules (``nltk.stem.porter`` and
    the three small ones it imports) are executed under placeholder ``nltk``/``nltk.stem`` packages,
    then every ``nltk`` entry this added is taken out of ``sys.modules`` again, so a later
    ``import nltk`` anywhere in the process is the ordinary, complete one."""
    if "nltk" in sys.modules:  # already paid for (or being imported the ordinary way)
        from nltk.stem.porter import PorterStemmer
        return PorterStemmer
    import importlib
    import importlib.util
    import types

    spec = importlib.util.find_spec("nltk")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nltk is not installed (pip install nltk)")
    before = set(sys.modules)
    try:
        root = types.ModuleType("nltk")
        root.__path__ = list(spec.submodule_search_locations)
        stem = types.ModuleType("nltk.stem")
        stem.__path__ = [os.path.join(root.__path__[0], "stem")]
        sys.modules["nltk"], sys.modules["nltk.stem"] = root, stem
        return importlib.import_module("nltk.stem.porter").PorterStemmer
    finally:
        for name in set(sys.modules) - before:
            if name == "nltk" or name.startswith("nltk."):
                del sys.modules[name]


# Lucene's PorterStemmer is Martin Porter's reference implementation, whose departures from the
# 1980 paper NLTK implements as MARTIN_EXTENSIONS ('technologi' -> 'technolog').
_PorterStemmer = _porter_stemmer_class()
_STEMMER = _PorterStemmer(mode=_PorterStemmer.MARTIN_EXTENSIONS)


@lru_cache(maxsize=1 << 17)  # ~20 MB: frequent tokens; a catalog's rare model codes come and go
def _term(token: str) -> str:
    """A word-broken token's indexed term ('' when it is dropped): possessive, lower-case, stop, stem."""
    tok = _POSSESSIVE.sub("", token).lower()
    return _STEMMER.stem(tok) if tok and tok not in LUCENE_ENGLISH_STOP_WORDS else ""


class _Separators(dict):
    """``str.translate`` table, filled lazily: a non-ASCII character that only separates words
    (neither part of a token, a joiner nor a token itself, as ``_TOKEN`` says) becomes a space."""

    def __missing__(self, codepoint: int) -> str:
        c = chr(codepoint)
        separates = codepoint > 127 and _TOKEN.findall(f"a{c}a 1{c}1 _{c}a {c}") == ["a", "a", "1", "1", "a"]
        self[codepoint] = " " if separates else c
        return self[codepoint]


_SEPARATORS = _Separators()
_NON_ASCII_WORD = re.compile(r"(\S*[^\x00-\x7f]\S*)")  # no token spans whitespace


def analyze(text: str) -> list[str]:
    """Lucene-like English analysis: tokens after possessive, lower-case, stop and stem.

    ``_TOKEN`` is slow (~0.25 us a character), so it reads only the whitespace-separated words that
    still hold non-ASCII characters once separators are spaces; the rest goes to ``_ASCII_TOKEN``."""
    if not text.isascii():
        text = text.translate(_SEPARATORS)
    if text.isascii():
        tokens = _ASCII_TOKEN.findall(text.lower())
    else:
        tokens = []
        for i, piece in enumerate(_NON_ASCII_WORD.split(text)):
            tokens += _TOKEN.findall(piece) if i % 2 else _ASCII_TOKEN.findall(piece.lower())
    return [t for t in map(_term, tokens) if t]


def lucene_norm_length(lengths: np.ndarray) -> np.ndarray:
    """Document length as Lucene stores it: one byte (SmallFloat.intToByte4), decoded back.

    Lengths below 24 are exact; above, 3 mantissa bits are kept (e.g. 300 -> 288)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = lengths.copy()
    big = lengths >= 24
    v = lengths[big] - 24
    nbits = np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) + 1
    shift = np.maximum(nbits - 4, 0)
    mantissa = np.where(nbits < 4, v, (v >> shift) & 0x07)
    encoded = np.where(nbits < 4, v, mantissa | ((shift + 1) << 3))
    enc_shift = (encoded >> 3) - 1
    decoded = np.where(enc_shift < 0, encoded & 0x07, ((encoded & 0x07) | 0x08) << np.maximum(enc_shift, 0))
    out[big] = 24 + decoded
    return out


PARALLEL_CHUNK = 4096  # texts per analysis task (a worker stays ~150 MB private); one chunk: in-process


def _analyze_texts(texts: Iterable[str], vocab: dict[str, int]) -> dict:
    """Analyse ``texts`` into flat arrays (term ids from ``vocab``, which grows): each document's
    text id, and per distinct text its term ids, term frequencies, token count and ``ptr``."""
    text_id: dict[str, int] = {}
    doc_text, terms, tfs, ptr, lengths = array("i"), array("i"), array("i"), array("q", [0]), array("i")
    for text in texts:
        tid = text_id.get(text)
        if tid is None:
            tid = text_id[text] = len(lengths)
            tokens = analyze(text)
            counts = collections.Counter(tokens)
            terms.extend([vocab.setdefault(t, len(vocab)) for t in counts])
            tfs.extend(counts.values())
            ptr.append(len(terms))
            lengths.append(len(tokens))
        doc_text.append(tid)
    return {"doc_text": np.frombuffer(doc_text, dtype=np.int32), "terms": np.frombuffer(terms, dtype=np.int32),
            "tfs": np.frombuffer(tfs, dtype=np.int32), "ptr": np.frombuffer(ptr, dtype=np.int64),
            "lengths": np.frombuffer(lengths, dtype=np.int32)}


def _analyze_chunk(texts: list[str]) -> tuple[list[str], dict]:
    """A worker's task: one chunk analysed against a vocabulary of its own (texts deduplicated
    within the chunk only, so no process holds the corpus' texts)."""
    vocab: dict[str, int] = {}
    out = _analyze_texts(texts, vocab)
    return list(vocab), out


def _chunks(contents: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(contents)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def analyze_corpus(contents: Iterable[str], processes: int | None = None
                   ) -> tuple[dict[str, int], np.ndarray, dict[str, np.ndarray]]:
    """Analyse every document: (vocabulary, each document's text id, and per text: its term ids,
    term frequencies and token count, as flat arrays with ``ptr``).

    A corpus larger than one chunk is analysed by ``processes`` worker processes (default: one per
    core), a bounded number of chunks in flight, merged in order so term ids are first-occurrence
    order as in one process. A small one is analysed here, each distinct text once."""
    chunks = _chunks(contents, PARALLEL_CHUNK)
    first = next(chunks, [])
    second = next(chunks, None)
    processes = processes or os.cpu_count() or 1
    if second is None or processes < 2:
        vocab: dict[str, int] = {}
        out = _analyze_texts(itertools.chain(first, second or [], itertools.chain.from_iterable(chunks)), vocab)
        return vocab, out.pop("doc_text"), out
    vocab, parts, remaps = {}, [], []
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pending: collections.deque = collections.deque()
        for chunk in itertools.chain([first, second], chunks):
            pending.append(pool.apply_async(_analyze_chunk, (chunk,)))
            while len(pending) > 2 * processes:  # bound the texts queued in this process
                _collect(pending.popleft().get(), vocab, parts, remaps)
        while pending:
            _collect(pending.popleft().get(), vocab, parts, remaps)
        pool.close()
        pool.join()
    return vocab, *_merge_parts(parts, remaps)


def _collect(result: tuple[list[str], dict], vocab: dict[str, int], parts: list, remaps: list) -> None:
    local_terms, part = result
    remaps.append(np.array([vocab.setdefault(t, len(vocab)) for t in local_terms], dtype=np.int32))
    parts.append(part)


def _merge_parts(parts: list[dict], remaps: list[np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Concatenate analysed chunks: text ids and postings offset per chunk, term ids mapped
    through each chunk's ``remap`` to the corpus vocabulary."""
    text_offsets = np.cumsum([0] + [len(p["lengths"]) for p in parts[:-1]])
    post_offsets = np.cumsum([0] + [len(p["terms"]) for p in parts[:-1]])
    doc_text = np.concatenate([p["doc_text"] + np.int32(o) for p, o in zip(parts, text_offsets)])
    texts = {"terms": np.concatenate([r[p["terms"]] for p, r in zip(parts, remaps)]),
             "tfs": np.concatenate([p["tfs"] for p in parts]),
             "lengths": np.concatenate([p["lengths"] for p in parts]),
             "ptr": np.concatenate([parts[0]["ptr"]] + [p["ptr"][1:] + o for p, o in zip(parts[1:], post_offsets[1:])])}
    return doc_text, texts


def lucene_score_matrix(vocab: dict[str, int], doc_text: np.ndarray, texts: dict[str, np.ndarray]) -> dict:
    """The term-document BM25 matrix exactly as Lucene's BM25Similarity scores it (float32,
    one-byte document lengths), in the CSC layout bm25s queries. Vectorised over postings, so
    a 1.18 M-document catalog builds in numpy/scipy rather than Python loops."""
    n_docs = len(doc_text)
    text_nnz = np.diff(texts["ptr"])
    doc_nnz = text_nnz[doc_text]
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(doc_nnz, out=indptr[1:])
    # posting k of document d is posting (k - indptr[d]) of its text
    gather = np.repeat(texts["ptr"][:-1][doc_text] - indptr[:-1], doc_nnz) + np.arange(indptr[-1], dtype=np.int64)
    cols = texts["terms"][gather]
    tf = texts["tfs"][gather].astype(np.float32)
    del gather
    lengths = texts["lengths"][doc_text].astype(np.int64)
    avgdl = np.float32(lengths.sum() / max(n_docs, 1))
    df = np.bincount(cols, minlength=len(vocab)).astype(np.float64)
    idf = np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    norm_inv = (np.float32(1.0) / (np.float32(K1) * (np.float32(1 - B) + np.float32(B)
                * lucene_norm_length(lengths).astype(np.float32) / avgdl))).astype(np.float32)
    weight = idf[cols]
    tf *= np.repeat(norm_inv, doc_nnz)
    tf += np.float32(1.0)
    scores = weight - weight / tf
    del weight, tf
    # CSR (documents) -> CSC (terms): scipy's conversion keeps documents ascending within a term
    csc = scipy.sparse.csr_matrix((scores, cols, indptr), shape=(n_docs, len(vocab))).tocsc()
    return {"data": csc.data.astype(np.float32, copy=False), "indices": csc.indices.astype(np.int32, copy=False),
            "indptr": csc.indptr.astype(np.int64), "num_docs": n_docs}


class MappedVocab:
    """term -> id over two memory-mapped arrays (the terms sorted as bytes, their ids) saved beside
    the index: a worker looks up its query terms by binary search instead of holding the catalog's
    vocabulary as a Python dict (~100 MB per worker for the 400 k terms of a full catalog)."""

    def __init__(self, path: Path, mmap: bool = True) -> None:
        mode = "r" if mmap else None
        self.terms = np.load(path / "vocab.terms.npy", mmap_mode=mode)
        self.ids = np.load(path / "vocab.ids.npy", mmap_mode=mode)

    @staticmethod
    def write(path: Path, vocab: dict[str, int]) -> None:
        terms = np.array([t.encode("utf-8") for t in vocab], dtype=bytes)
        order = np.argsort(terms, kind="stable")
        np.save(path / "vocab.terms.npy", terms[order])
        np.save(path / "vocab.ids.npy", np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))[order])

    def get(self, term: str, default: int | None = None) -> int | None:
        key = term.encode("utf-8")
        j = int(np.searchsorted(self.terms, key))
        if len(key) <= self.terms.dtype.itemsize and j < len(self.terms) and self.terms[j] == key:
            return int(self.ids[j])
        return default

    def __len__(self) -> int:
        return len(self.terms)


class SearchEngine:
    """Top-k BM25 over a list of documents; results are document indexes.

    For a catalog (:meth:`for_catalog`) the index is built once per catalog digest into the cache
    (under a lock, in a temporary folder renamed into place, so concurrent workers wait for one
    builder and a killed build leaves nothing half-written) and memory-mapped by every worker
    through ``bm25s.BM25.load(mmap=True)``: the postings are shared page cache, not per-worker heap."""

    def __init__(self, retriever: bm25s.BM25, built: bool = False, vocab: MappedVocab | None = None) -> None:
        retriever.dtype = "float32"  # the fast first pass (np.add.at of float32 postings); see search()
        self.retriever = retriever
        self.vocab: dict[str, int] | MappedVocab = vocab if vocab is not None else retriever.vocab_dict
        self.num_docs = int(retriever.scores["num_docs"])
        self.tie_rank: np.ndarray | None = None  # per document: the docid order ties follow
        self.built = built  # True when this process built the index (False: loaded from the cache)

    @classmethod
    def build(cls, contents: Iterable[str], processes: int | None = None) -> SearchEngine:
        """Index ``contents`` (analysed over ``processes`` worker processes when larger than a chunk)."""
        logging.getLogger("bm25s").setLevel(logging.WARNING)
        vocab, doc_text, texts = analyze_corpus(contents, processes)
        retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        retriever.vocab_dict = vocab
        retriever.unique_token_ids_set = set(vocab.values())
        retriever.nonoccurrence_array = None  # Lucene's BM25 has no non-occurrence term
        retriever.scores = lucene_score_matrix(vocab, doc_text, texts)
        return cls(retriever, built=True)

    @classmethod
    def for_catalog(cls, catalog: Catalog, mmap: bool = True) -> SearchEngine:
        """The catalog's index (cached, memory-mapped unless ``mmap=False``), with ASIN-order ties."""
        engine = cls.load_or_build(lambda: _strings(catalog.table.column("contents")), catalog.key, mmap)
        engine.tie_rank = catalog.asin_rank()  # ties as pyserini breaks them
        return engine

    @staticmethod
    def index_path(key: str) -> Path:
        return Path(cache_dir()) / f"webshop-bm25-v{INDEX_VERSION}-{key}"

    @classmethod
    def load_or_build(cls, contents_fn: Callable[[], Iterable[str]], key: str, mmap: bool = True) -> SearchEngine:
        """Load the saved index keyed by the catalog digest, else build and save it (one builder)."""
        path = cls.index_path(key)
        engine = cls._load(path, mmap)
        if engine is not None:
            return engine
        with build_lock(path):
            engine = cls._load(path, mmap)  # another worker built it while we waited
            if engine is not None:
                return engine
            for stale in path.parent.glob(f"{path.name}.*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)  # a killed build's leftovers
            shutil.rmtree(path, ignore_errors=True)  # a torn or foreign index
            engine = cls.build(contents_fn())
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            engine.retriever.save(str(tmp), show_progress=False)
            MappedVocab.write(tmp, engine.vocab)
            tmp.rename(path)
        loaded = cls._load(path, mmap)  # serve from the mapped files, as every other worker does
        if loaded is None:
            raise RuntimeError(f"webshop: the search index just saved in {path} cannot be loaded")
        loaded.built = True
        return loaded

    @classmethod
    def _load(cls, path: Path, mmap: bool) -> SearchEngine | None:
        if not (path / "params.index.json").exists():
            return None
        try:
            return cls(bm25s.BM25.load(str(path), mmap=mmap, load_vocab=False), vocab=MappedVocab(path, mmap))
        except Exception:  # noqa: BLE001 - a torn or foreign cache is rebuilt
            return None

    def _term_ids(self, query: str) -> list[int]:
        ids = (self.vocab.get(t) for t in analyze(query))
        return [j for j in ids if j is not None]

    def _exact(self, ids: list[int], docs: np.ndarray) -> np.ndarray:
        """Lucene's score of each of ``docs`` (ascending): its disjunction scorers (WANDScorer,
        BooleanScorer, DisjunctionSumScorer) add the terms' float scores in a double and round
        the sum to float once, where bm25s adds them in float32 term by term."""
        csc = self.retriever.scores
        total = np.zeros(len(docs), dtype=np.float64)
        for j in ids:
            lo, hi = int(csc["indptr"][j]), int(csc["indptr"][j + 1])
            postings = csc["indices"][lo:hi]  # ascending document ids
            pos = np.minimum(np.searchsorted(postings, docs), max(hi - lo - 1, 0))
            hit = postings[pos] == docs if hi > lo else np.zeros(len(docs), dtype=bool)
            total[hit] += csc["data"][lo:hi][pos[hit]]
        return total.astype(np.float32)

    def scores(self, query: str) -> np.ndarray:
        """Every document's score for ``query``, as Lucene computes it."""
        ids = self._term_ids(query)
        scores = np.zeros(self.num_docs, dtype=np.float32)
        if ids:
            approx = self.retriever.get_scores(ids)
            hits = np.flatnonzero(approx)
            scores[hits] = self._exact(ids, hits)
        return scores

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Indexes of the top ``k`` matching documents, best first; exact ties in ``tie_rank``
        order (ascending docid, as Anserini sorts), else by lower index.

        bm25s scores every document in float32 (fast); only the documents that can reach the
        top ``k`` once summed as Lucene sums (float32 rounding moves a sum of n terms by at most
        ~n ulps) are rescored exactly and ranked."""
        ids = self._term_ids(query)
        if not ids:
            return []
        approx = self.retriever.get_scores(ids)
        if len(approx) > 4 * k:
            kth = float(np.partition(approx, len(approx) - k)[len(approx) - k])
            margin = kth * (len(ids) + 2) * 2.0 ** -21  # well above the float32 rounding of the sums
            cand = np.flatnonzero(approx >= max(kth - margin, 1e-30))
        else:
            cand = np.flatnonzero(approx > 0)
        exact = self._exact(ids, cand)
        keep = exact > 0
        cand, exact = cand[keep], exact[keep]
        if self.tie_rank is None:
            order = cand[np.argsort(-exact, kind="stable")]
        else:
            order = cand[np.lexsort((self.tie_rank[cand], -exact))]
        return order[:k].tolist()


def _strings(column) -> Iterator[str]:
    """A string column's values, one Arrow chunk at a time (never the whole column as a list)."""
    for chunk in column.chunks:
        yield from chunk.to_pylist()
