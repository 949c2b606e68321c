"""Which spaCy pipeline reproduces WebShop's own unit-test assertions, and how much the choice moves
realistic rewards.

The only evidence of the pipeline the WebShop authors ran is what their tests assert:
tests/web-agent-site/engine/test_goal.py at 64fa2a5 (spaCy 3.3.0 pinned, ``en_core_web_sm`` loaded;
no sm 3.3.x is obtainable here) and its variant at 2d4be84 (spaCy 3.4.1, ``en_core_web_lg``). Their
inputs and assertions are in tests/fixtures/webshop_goal_vectors.json (``asserted``). For every
shipped tagger table (``hpl_envs/webshop/data/tagger_<name>_1k.json``, one per pipeline, built by
webshop_build_tagger.py) this prints the pipeline x vector table: each tagger-dependent vector's
value (PASS/fail against the assertion) and how many of ALL the file's assertions hpl's reward
passes with that tagger.

--purchases N also compares the taggers on realistic purchases (for N goals: the goal product with
the goal's options, and the top-10 search results of its instruction without options): the share of
cases whose title_score, r_type and total reward equal the default tagger's.

  python benchmarks/webshop_spacy_pipelines.py [--purchases 2000] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

from hpl_envs.webshop.reward import DEFAULT_TAGGER, TABLE_TAGGERS, RewardModel

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "webshop_goal_vectors.json"


def check(value, assertion) -> bool:
    op, *args = assertion
    if op == "==":
        return value == args[0]
    if op == "<":
        return value < args[0]
    if op == "isclose":
        return math.isclose(value, args[0], abs_tol=args[1])
    raise ValueError(f"unknown assertion {assertion!r}")


def assertion_results(model: RewardModel, vectors: dict) -> list[dict]:
    """One row per assertion of test_goal.py: its label, hpl's value with ``model`` and pass/fail."""
    ns = SimpleNamespace
    rows = []

    def add(label: str, got: dict, asserted: dict, variant: str = "64fa2a5") -> None:
        for field, assertion in asserted.items():
            rows.append({"label": f"{label}.{field}", "value": got[field], "asserted": assertion,
                         "ok": check(got[field], assertion), "variant": variant})

    for i, c in enumerate(vectors["type"], 1):
        add(f"type{i}", model.type_reward(ns(**c["purchased"]), ns(**c["goal"])), c["asserted"])
    for i, c in enumerate(vectors["attribute"], 1):
        r, n = model.attribute_reward(ns(**c["purchased"]), ns(attributes=c["goal"]))
        add(f"attr{i}", {"r_attr": r, "matches": n}, c["asserted"])
    for i, c in enumerate(vectors["option"], 1):
        r, n = model.option_reward(c["purchased"], c["goal"])
        add(f"option{i}", {"r_option": r, "matches": n}, c["asserted"])
    for i, c in enumerate(vectors["reward"], 1):
        total, _ = model.reward(ns(**c["purchased"]), ns(**c["goal"]), c["price"], c["options"])
        add(f"reward{i}", {"total": total}, c["asserted"])
    for i, c in enumerate(vectors["type_2d4be84"], 1):
        add(f"lg-type{i}", model.type_reward(ns(**c["purchased"]), ns(**c["goal"])), c["asserted"], "2d4be84")
    return rows


def pipeline_table(vectors: dict, markdown: bool) -> dict[str, list[dict]]:
    results = {name: assertion_results(RewardModel(tagger=name), vectors) for name in TABLE_TAGGERS}
    # columns: the assertions whose outcome differs between pipelines, or that some pipeline fails
    labels = [r["label"] for r in next(iter(results.values()))]
    varying = [j for j, lab in enumerate(labels)
               if len({(res[j]["value"], res[j]["ok"]) for res in results.values()}) > 1
               or not all(res[j]["ok"] for res in results.values())]
    first = next(iter(results.values()))
    head = ["tagger (pipeline)", *[f"{labels[j]} {_fmt_assert(first[j]['asserted'])}" for j in varying],
            "test_goal.py 64fa2a5 passed", "2d4be84 (lg) passed"]
    lines = []
    for name, res in results.items():
        model = RewardModel(tagger=name).spacy_model.split(" (")[0]
        main = [r for r in res if r["variant"] == "64fa2a5"]
        lg = [r for r in res if r["variant"] == "2d4be84"]
        lines.append([f"{name} ({model})", *[_fmt(res[j]) for j in varying],
                      f"{sum(r['ok'] for r in main)}/{len(main)}", f"{sum(r['ok'] for r in lg)}/{len(lg)}"])
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        for line in [head, *lines]:
            print("  ".join(line))
    return results


def _fmt_assert(a) -> str:
    return {"==": f"=={a[1]}", "<": f"<{a[1]}", "isclose": f"~{a[1]}"}[a[0]]


def _fmt(row: dict) -> str:
    v = row["value"]
    text = f"{v:.3f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)
    return text + ("" if row["ok"] else " ✗")


def purchases(n_goals: int) -> None:
    from hpl_envs import make_env

    env = make_env("webshop")
    cat = env.shared.catalog
    cases = []
    for goal in env.goals[:n_goals]:
        cands = {cat.index(goal.asin)} | set(env.shared.search.search(goal.instruction_text.lower(), 10))
        cases += [(goal, cat.product(i)) for i in sorted(cands)]
    results = {}
    for name in TABLE_TAGGERS:
        model = RewardModel(tagger=name)
        results[name] = []
        for g, p in cases:
            options = dict(g.goal_options) if p.asin == g.asin and isinstance(g.goal_options, dict) else {}
            total, info = model.reward(p, g, env.shared.prices.price(cat.index(p.asin)), options)
            results[name].append((info["title_score"], info["r_type"], total))
    print(f"{len(cases)} (goal, purchased product) pairs from {n_goals} goals; identical to the default tagger "
          f"({DEFAULT_TAGGER}) in title_score / r_type / total reward:")
    ref = results[DEFAULT_TAGGER]
    for name, res in results.items():
        same = [sum(x[k] == y[k] for x, y in zip(res, ref)) / len(cases) for k in range(3)]
        print(f"  {name}: " + " / ".join(f"{s:.1%}" for s in same))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--purchases", type=int, default=0, help="goals for the realistic-purchase comparison")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    vectors = json.loads(FIXTURE.read_text(encoding="utf-8"))
    pipeline_table(vectors, args.markdown)
    if args.purchases:
        purchases(args.purchases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
