"""Record what the ORIGINAL WebShop draws for prices and goals after ``random.seed(s)``.

Runs ``engine.py:generate_product_prices`` and ``goal.py:get_goals`` of a WebShop checkout (not part
of hpl; e.g. ``git clone https://github.com/princeton-nlp/WebShop`` at 64fa2a5) on hpl's catalog
rows, then shuffles with ``random.seed(233)`` as ``SimServer`` does, and writes digests of the goal
sequence and of every product's price per seed. Imports those two functions never use are stubbed.
The output is ``tests/fixtures/webshop_original_prices.json``.

  python benchmarks/webshop_record_original_prices.py WEBSHOP_CHECKOUT OUT.json
"""

import hashlib
import json
import random
import sys
import types
from pathlib import Path

# stubs for imports the two functions never use
for name in ["spacy", "flask", "rich", "tqdm", "pyserini", "pyserini.search", "pyserini.search.lucene",
             "web_agent_site", "web_agent_site.utils", "web_agent_site.engine", "web_agent_site.engine.normalize", "thefuzz", "cleantext", "rank_bm25"]:
    sys.modules[name] = types.ModuleType(name)
sys.modules["spacy"].load = lambda *a, **k: None
sys.modules["flask"].render_template_string = None
sys.modules["rich"].print = lambda *a, **k: None
sys.modules["tqdm"].tqdm = lambda x, **k: x
sys.modules["pyserini.search.lucene"].LuceneSearcher = None
u = sys.modules["web_agent_site.utils"]
u.DEFAULT_FILE_PATH = u.BASE_DIR = u.DEFAULT_ATTR_PATH = u.DEFAULT_REVIEW_PATH = u.DEFAULT_ALL_PRODS_PATH = u.HUMAN_ATTR_PATH = "/nonexistent"
sys.modules["web_agent_site.engine.normalize"].normalize_color = lambda x: x
sys.modules["thefuzz"].fuzz = None
sys.modules["rank_bm25"].BM25Okapi = None
eng, gol = {}, {}
src = Path(sys.argv[1]) / "web_agent_site" / "engine"
exec((src / "engine.py").read_text(), eng)  # noqa: S102 - the original, run as a reference
exec((src / "goal.py").read_text(), gol)  # noqa: S102

from hpl_envs.webshop.catalog import load_catalog  # noqa: E402

cat = load_catalog()
t = cat.table
cols = {c: t.column(c).to_pylist() for c in ["asin", "pricing", "instruction_text", "instruction_attributes", "human_instructions_json",
                                              "category", "query", "name", "Title", "product_category", "options_json"]}
products = []
for i in range(len(cat)):
    p = {c: cols[c][i] for c in ["asin", "pricing", "instruction_text", "instruction_attributes", "category", "query", "name", "Title", "product_category"]}
    p["options"] = json.loads(cols["options_json"][i])
    if cols["human_instructions_json"][i] is not None:
        p["instructions"] = json.loads(cols["human_instructions_json"][i])
    products.append(p)

def digest(x):
    return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()

out = {}
for human in (False, True):
    for seed in (0, 42, 2024):
        random.seed(seed)
        prices = eng["generate_product_prices"](products)
        goals = gol["get_goals"](products, prices, human)
        random.seed(233)
        random.shuffle(goals)
        g = [[x["asin"], x["instruction_text"], x["price_upper"]] for x in goals]
        pr = [prices[a] for a in cols["asin"]]
        out[f"{'human' if human else 'synthetic'}:{seed}"] = {
            "n_goals": len(g), "goals_sha256": digest(g), "prices_sha256": digest(pr),
            "first_goals": g[:5], "first_prices": pr[:5]}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1) + "\n")
print({k: (v["n_goals"], v["goals_sha256"][:12]) for k, v in out.items()})
