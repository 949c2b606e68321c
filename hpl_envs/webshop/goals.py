"""WebShop goals, built and ordered exactly as ``engine/goal.py`` does, but seeded per product.

Order: products in catalog order, each product's goals in ``itertools.product`` order over its
sorted option names, then shuffled with ``random.seed(233)``; that shuffle depends only on the
list length, so task ``i`` here is goal ``i`` of the original. Splits follow WebShop's
baseline convention: test = goals[0:500], dev = goals[500:1500], train = the rest.

What differs on purpose: the original draws each product's ``price_upper`` (and range prices)
from the unseeded global generator, so the price clause of an instruction changes between
processes. hpl draws it from a generator seeded by the ASIN.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from hpl_envs.webshop.catalog import Catalog

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (1500, None)}
SHUFFLE_SEED = 233


@dataclass
class Goal:
    asin: str
    category: str
    query: str
    name: str
    product_category: str
    instruction_text: str
    attributes: list[str]
    price_upper: float
    goal_options: dict[str, str] | list[str]
    weight: float = 1.0
    extra: dict = field(default_factory=dict)


def price_upper_for(asin: str, price: float) -> tuple[float, str]:
    """The goal's price cap and instruction suffix (WebShop's rule, per-ASIN seed)."""
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, upper = sorted(random.Random(f"webshop-goal:{asin}").sample(price_range, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


def synthetic_goals(catalog: Catalog) -> list[Goal]:
    goals: list[Goal] = []
    count_attrs: dict[str, int] = defaultdict(int)
    instr_col = catalog.table.column("instruction_text").to_pylist()
    iattr_col = catalog.table.column("instruction_attributes").to_pylist()
    for i, instruction in enumerate(instr_col):
        if instruction is None:
            continue
        p = catalog.product(i)
        attributes = iattr_col[i]
        upper, price_text = price_upper_for(p.asin, catalog.price(i))
        names = sorted(p.options)
        for combo in itertools.product(*(p.options[n] for n in names)):
            goal_options = dict(zip(names, combo))
            option_text = ", and ".join(f"{k}: {v}" for k, v in goal_options.items())
            option_text = " with " + option_text if option_text else ""
            goals.append(
                Goal(
                    asin=p.asin,
                    category=p.category,
                    query=p.query,
                    name=p.Title,
                    product_category=p.product_category,
                    instruction_text=f"{instruction}{option_text}{price_text}",
                    attributes=list(attributes),
                    price_upper=upper,
                    goal_options=goal_options,
                )
            )
            for a in attributes:
                count_attrs[a] += 1
    for g in goals:
        g.weight = sum(1.0 / count_attrs[a] for a in g.attributes) / len(g.attributes)
    return goals


def human_goals(catalog: Catalog) -> list[Goal]:
    goals: list[Goal] = []
    col = catalog.table.column("human_instructions_json").to_pylist()
    for i, raw in enumerate(col):
        if raw is None:
            continue
        p = catalog.product(i)
        upper, price_text = price_upper_for(p.asin, catalog.price(i))
        for ins in json.loads(raw):
            if not ins.get("instruction_attributes"):
                continue
            goals.append(
                Goal(
                    asin=p.asin,
                    category=p.category,
                    query=p.query,
                    name=p.name,
                    product_category=p.product_category,
                    instruction_text=ins["instruction"].strip(".") + price_text,
                    attributes=list(ins["instruction_attributes"]),
                    price_upper=upper,
                    goal_options=list(ins.get("instruction_options", [])),
                )
            )
    return goals


def build_goals(catalog: Catalog, source: str = "synthetic") -> list[Goal]:
    if source == "synthetic":
        goals = synthetic_goals(catalog)
    elif source == "human":
        goals = human_goals(catalog)
    else:
        raise ValueError(f"webshop goals must be 'synthetic' or 'human', got {source!r}")
    random.Random(SHUFFLE_SEED).shuffle(goals)
    return goals


def product_disjoint_splits(goals: list[Goal]) -> dict[str, list[int]]:
    """Goal indexes per split such that no product appears in two splits.

    WebShop's convention splits goals by position, so most test products also occur in train with
    other options (125 of 146 on the 1k catalog). Here products are ordered by a hash of their ASIN
    and assigned whole to test, then dev, until each holds about as many goals as WebShop's split
    (500 and 1000, scaled to the goal count); the rest is train. Goal order within a split is kept.
    """
    import hashlib

    n = len(goals)
    by_asin: dict[str, list[int]] = {}
    for i, g in enumerate(goals):
        by_asin.setdefault(g.asin, []).append(i)
    order = sorted(by_asin, key=lambda a: hashlib.sha256(a.encode()).hexdigest())
    targets = {"test": min(500, n * 500 // 6910 or 1), "dev": min(1000, n * 1000 // 6910 or 1)}
    out: dict[str, list[int]] = {"test": [], "dev": [], "train": []}
    for asin in order:
        bucket = next((s for s in ("test", "dev") if len(out[s]) < targets[s]), "train")
        out[bucket].extend(by_asin[asin])
    return {k: sorted(v) for k, v in out.items()}


def split_range(split: str, n_goals: int) -> range:
    if split == "all":
        return range(n_goals)
    if split not in SPLITS:
        raise ValueError(f"webshop: unknown split {split!r}; choose from {[*SPLITS, 'all']}")
    lo, hi = SPLITS[split]
    return range(min(lo, n_goals), n_goals if hi is None else min(hi, n_goals))
