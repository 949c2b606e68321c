"""WebShop goals, built and ordered exactly as ``engine/goal.py`` does, but seeded per product.

Order: products in catalog order, each product's goals in ``itertools.product`` order over its
sorted option names, then shuffled with ``random.seed(233)``; that shuffle depends only on the
list length, so task ``i`` here is goal ``i`` of the original. Splits follow WebShop's
baseline convention: test = goals[0:500], dev = goals[500:1500], train = the rest.

Prices (:class:`ProductPrices`): the original draws every range-priced product's price
(``random.uniform``, catalog order, in ``load_products``) and then each goal group's
``price_upper`` (``random.sample``, in goal-building order) from the global generator, before its
``random.seed(233)``; unseeded, the price clauses change from process to process. hpl's default,
``prices="per-product"``, draws both from generators seeded by the ASIN, so a task is the same in
every process and on every catalog that holds its product. ``prices="original"`` with
``price_seed=s`` replays the original's sequence from ``random.seed(s)``: a run of the original whose
process called ``random.seed(s)`` before building its env has identical prices and goals.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from hpl_envs.webshop.catalog import Catalog, product_price

PRICE_RANGE = [10.0 * i for i in range(1, 100)]
SPLITS = {"test": (0, 500), "dev": (500, 1500), "train": (1500, None)}
SHUFFLE_SEED = 233
PRICE_MODES = ("per-product", "original")


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


def price_upper_for(asin: str, price: float, rng: random.Random | None = None) -> tuple[float, str]:
    """The goal's price cap and instruction suffix (WebShop's rule; per-ASIN seed unless ``rng``)."""
    price_range = [p for p in PRICE_RANGE if p > price][:4]
    if len(price_range) >= 2:
        _, upper = sorted((rng or random.Random(f"webshop-goal:{asin}")).sample(price_range, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


class ProductPrices:
    """Each product's price and the goals' price caps, per-product seeded or as the original drew them.

    ``original`` draws every range price up front, in catalog order, from ``random.Random(seed)``;
    the same generator then serves :meth:`cap` while the goals are built (once, in the original's
    order), exactly the sequence the original takes from its global generator."""

    def __init__(self, catalog: Catalog, mode: str = "per-product", seed: int | None = None) -> None:
        if mode not in PRICE_MODES:
            raise ValueError(f"webshop: prices must be one of {PRICE_MODES}, got {mode!r}")
        if mode == "original" and not isinstance(seed, int):
            raise ValueError("webshop: prices='original' needs price_seed=<int>, the value the original run "
                             "passed to random.seed() before building its env")
        self.catalog, self.mode, self.seed = catalog, mode, seed
        self._drawn: dict[int, float] = {}
        self._rng: random.Random | None = None
        if mode == "original":
            self._rng = random.Random(seed)
            pricing = catalog.table.column("pricing").combine_chunks()
            offsets, values = pricing.offsets.to_numpy(), pricing.values.to_numpy()
            for i in np.flatnonzero(np.diff(offsets) >= 2).tolist():
                lo = offsets[i]
                self._drawn[i] = self._rng.uniform(float(values[lo]), float(values[lo + 1]))

    def price(self, i: int) -> float:
        if i in self._drawn:
            return self._drawn[i]
        if self.mode == "original":
            return product_price("", self.catalog.table.column("pricing")[i].as_py())  # fixed price
        return self.catalog.price(i)

    def cap(self, asin: str, price: float) -> tuple[float, str]:
        """Next goal group's price cap: call once per group, in the original's goal order."""
        return price_upper_for(asin, price, self._rng)


def synthetic_goals(catalog: Catalog, prices: ProductPrices | None = None) -> list[Goal]:
    prices = prices or ProductPrices(catalog)
    goals: list[Goal] = []
    count_attrs: dict[str, int] = defaultdict(int)
    instr_col = catalog.table.column("instruction_text")
    iattr_col = catalog.table.column("instruction_attributes")
    for i in _rows_with(instr_col):  # a full catalog has goals for ~1 % of its products
        instruction = instr_col[i].as_py()
        p = catalog.product(i)
        attributes = iattr_col[i].as_py()
        upper, price_text = prices.cap(p.asin, prices.price(i))
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


def human_goals(catalog: Catalog, prices: ProductPrices | None = None) -> list[Goal]:
    prices = prices or ProductPrices(catalog)
    goals: list[Goal] = []
    col = catalog.table.column("human_instructions_json")
    for i in _rows_with(col):
        raw = col[i].as_py()
        p = catalog.product(i)
        upper, price_text = prices.cap(p.asin, prices.price(i)) if prices.mode == "per-product" else (0, "")
        for ins in json.loads(raw):
            if not ins.get("instruction_attributes"):
                continue
            if prices.mode == "original":  # the original draws a cap per human instruction
                upper, price_text = prices.cap(p.asin, prices.price(i))
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


def _rows_with(column) -> list[int]:
    """Rows where ``column`` is not null, in catalog order."""
    import pyarrow.compute as pc

    return pc.indices_nonzero(pc.is_valid(column)).to_pylist()


def build_goals(catalog: Catalog, source: str = "synthetic", prices: ProductPrices | None = None) -> list[Goal]:
    """Goals in the original's order. ``prices`` in ``original`` mode is consumed: use it once."""
    if source == "synthetic":
        goals = synthetic_goals(catalog, prices)
    elif source == "human":
        goals = human_goals(catalog, prices)
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
