"""How closely hpl's BM25 search reproduces WebShop's pyserini/Lucene search.

Needs the original Lucene index (``$HPL_DATA_DIR/webshop/search_index_1k_lucene95``) and a Python
environment with pyserini 0.22/0.25 (for its Anserini fat jar) and pyjnius on Java >= 11;
pyserini is not an hpl dependency. The Lucene side runs in that interpreter as a subprocess:

  python benchmarks/bench_webshop_search_fidelity.py --lucene-python /path/to/venv/bin/python \
      [--java-home /usr/lib/jvm/java-17-openjdk-amd64]

Queries: the instruction text of every goal (what agents type) and the 1,506 human-written search
queries of WebShop's goal_query_map.json. Reports top-10 set overlap, exact top-10 order, top-1
agreement, top-50 overlap and identical top-50 lists, with exact score ties broken in Lucene's
docid (ASIN) order as pyserini sorts them (hpl's rule) and, for comparison, in catalog order; then
each top-50 list that still differs, by cause (``classify``: query analysis, document analysis,
score rounding, ties), from Lucene's own analysis of the query and its scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

import numpy as np

LUCENE_SCRIPT = r"""
import glob, json, os, sys, site
import jnius_config
jars = []
for d in site.getsitepackages():
    jars += glob.glob(os.path.join(d, 'pyserini', 'resources', 'jars', 'anserini-*-fatjar.jar'))
jnius_config.set_classpath(jars[0])
from jnius import autoclass
searcher = autoclass('io.anserini.search.SimpleSearcher')(sys.argv[1])
analyzer = autoclass('io.anserini.analysis.DefaultEnglishAnalyzer').newDefaultInstance()
utils = autoclass('io.anserini.analysis.AnalyzerUtils')
queries = json.load(open(sys.argv[2]))
out = []
for q in queries:
    hits = searcher.search(q, 50)
    out.append({"docids": [h.docid for h in hits], "scores": [h.score for h in hits],
                "terms": list(utils.analyze(analyzer, q).toArray())})
json.dump(out, open(sys.argv[3], 'w'))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lucene-python", required=True, help="interpreter with pyserini + pyjnius installed")
    ap.add_argument("--java-home", default=os.environ.get("JAVA_HOME"))
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    from hpl_envs import make_env
    from hpl_envs.data import require

    env = make_env("webshop")
    index = require("webshop/search_index_1k_lucene95", "webshop")
    sets = {"goal instructions": sorted({g.instruction_text.lower() for g in env.goals})}
    gq = require("webshop/goal_query_map.json", "webshop")
    sets["human queries"] = sorted({q for qs in json.loads(gq.read_text()).values() for q in qs})
    cat = env.shared.catalog
    for name, queries in sets.items():
        queries = queries[: args.limit] if args.limit else queries
        with tempfile.TemporaryDirectory() as tmp:
            qf, of = os.path.join(tmp, "q.json"), os.path.join(tmp, "o.json")
            json.dump(queries, open(qf, "w"))
            run_env = dict(os.environ)
            if args.java_home:
                run_env["JAVA_HOME"] = args.java_home
            subprocess.run([args.lucene_python, "-c", LUCENE_SCRIPT, str(index), qf, of], check=True, env=run_env)
            lucene_out = json.load(open(of))
            lucene = [r["docids"] for r in lucene_out]
        engine = env.shared.search
        lucene_rank = engine.tie_rank
        for ties, rank in (("docid (ASIN) order, as pyserini", lucene_rank), ("catalog order", None)):
            engine.tie_rank = rank
            top10 = exact10 = top1 = top50 = exact50 = 0.0
            for q, ref in zip(queries, lucene):
                mine = [cat.asin(i) for i in engine.search(q, 50)]
                if ref[:10]:
                    top10 += len(set(mine[:10]) & set(ref[:10])) / len(ref[:10])
                exact10 += mine[:10] == ref[:10]
                exact50 += mine == ref
                top1 += bool(mine) and bool(ref) and mine[0] == ref[0]
                if ref:
                    top50 += len(set(mine) & set(ref)) / len(ref)
            n = len(queries)
            print(f"{name} ({n} queries), ties in {ties}: top-10 overlap {top10 / n:.4f} | identical top-10 lists "
                  f"{exact10 / n:.4f} | same top-1 {top1 / n:.4f} | top-50 overlap {top50 / n:.4f} | "
                  f"identical top-50 lists {exact50 / n:.4f}")
        engine.tie_rank = lucene_rank
        causes = classify(engine, cat, queries, lucene_out)
        print(f"  {name}: the {sum(causes.values())} differing top-50 lists by cause: "
              + (", ".join(f"{k} {v}" for k, v in causes.most_common()) or "none"))
    return 0


def classify(engine, cat, queries: list[str], lucene_out: list[dict]) -> Counter:
    """Why each top-50 list differs from pyserini's (ties in ASIN order): ``analyzer`` (the query's
    terms differ from Lucene's analysis), ``document analysis`` (a listed document's score differs by
    more than float rounding: its terms or length differ), ``score rounding`` (scores differ in the
    last bits only), ``ties`` (bit-identical scores, ordered differently)."""
    from hpl_envs.webshop.search import analyze

    causes: Counter = Counter()
    for q, ref in zip(queries, lucene_out):
        hits = engine.search(q, 50)
        mine = [cat.asin(i) for i in hits]
        if mine == ref["docids"]:
            continue
        if sorted(analyze(q)) != sorted(ref["terms"]):
            causes["analyzer"] += 1
            continue
        ids = engine._term_ids(q)
        docs = np.array(sorted({cat.index(a) for a in ref["docids"]} | set(hits)), dtype=np.int64)
        ours = dict(zip(docs.tolist(), engine._exact(ids, docs).tolist()))
        theirs = {cat.index(a): np.float32(x) for a, x in zip(ref["docids"], ref["scores"])}
        diffs = [abs(ours[d] - theirs[d]) / max(theirs[d], 1e-30) for d in theirs]
        if max(diffs) > 1e-5:
            causes["document analysis"] += 1
        elif max(diffs) > 0:
            causes["score rounding"] += 1
        else:
            causes["ties"] += 1
    return causes


if __name__ == "__main__":
    sys.exit(main())
